"""`python -m cni_calico NAME …` runs the executable NAME (calico, calico-ipam, calicoctl)."""

import sys

from cni_calico.entry import main

sys.exit(main([sys.argv[0]] + sys.argv[1:]))
