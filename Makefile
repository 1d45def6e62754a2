# cni-calico: `make test` installs what it needs and runs every suite; `make demo` shows it working.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
APT_PACKAGES := etcd-server etcd-client bird2 iperf3 iptables ipset nftables iputils-ping iproute2 socat \
	containernetworking-plugins openssl procps python3-venv containerd busybox-static lintian
DESTDIR ?=
CNI_BIN_DIR ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d
# calicoctl and calico-node go on the PATH here (links into the bundle in $(CNI_BIN_DIR)/cni-calico/).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
# The administrator's own unit directory: systemd reads it whatever PREFIX is, and a unit there wins over a
# distribution package's (/lib/systemd/system, where the .deb puts its copy).
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
BASH_COMPLETION_DIR ?= $(PREFIX)/share/bash-completion/completions
# bundle: /opt/cni/bin/calico is the PyInstaller onedir executable (self-contained, the default);
# venv: a tiny launcher into this checkout's venv (faster start-up; the checkout must stay in place).
INSTALL_FORM ?= bundle

.PHONY: deps system-deps venv test unit lint build install uninstall deb demo bench clean

deps: system-deps venv

# Installs only what is missing, so a prepared machine does not touch the network.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check cni_calico ipam tests examples build

unit: venv
	$(PY) -m pytest -q tests/unit

# The bundle is built first: tests/integration/test_bundle.py runs it. The kube-apiserver too where Go
# is installed (once: it is cached); without it the Kubernetes API tests skip, saying so.
test: deps lint build kube-apiserver-if-go
	$(PY) -m pytest -q -p no:cacheprovider tests

# Issue 6's suites alone (etcd fail-over, kill storm, fuzzing, stale DELs, FIFO reuse, node reboot); `make test` runs
# them too. FUZZ_CASES / FUZZ_EXEC_CASES / STORM_SEED tune or replay them.
.PHONY: reliability
reliability: deps
	$(PY) -m pytest -q -p no:cacheprovider -m reliability tests

# One PyInstaller onedir bundle (dist/cni-calico/calico + _internal/); every name is a relative symlink
# to its executable, which dispatches on the name it was called by (cni_calico/entry.py).
BUNDLE_NAMES := calico calico-ipam calicoctl calico-node calico-kube-controllers

build: venv
	$(VENV)/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/work build/cni-calico.spec
	mkdir -p dist/bin
	for name in $(BUNDLE_NAMES); do ln -sfn ../cni-calico/calico dist/bin/$$name; done
	# PyInstaller copies the build Python's shared libraries with their execute bits; a library is loaded,
	# not run (and lintian calls an executable one an error in the .deb).
	find dist/cni-calico/_internal -maxdepth 1 -type f -name 'lib*.so*' -exec chmod a-x {} +

# What an operator needs on a node, each path under $(DESTDIR) (packaging and tests install into a temp dir):
#   $(CNI_BIN_DIR)/cni-calico/             the onedir bundle, whole
#   $(CNI_BIN_DIR)/calico, calico-ipam     -> cni-calico/calico (the runtime's CNI plugins)
#   $(BINDIR)/calicoctl, calico-node       -> the bundle's executable (relative, so they run under any DESTDIR)
#   $(SYSTEMD_UNIT_DIR)/calico-node.service examples/calico-node.service, ExecStart=$(BINDIR)/calico-node
#   $(CNI_CONF_DIR)/10-calico.conf         examples/10-calico.conf, only where there is none: the operator's
#                                          edits (the etcd endpoints) survive a re-install
# The folder is copied whole (a onedir executable finds _internal/ only through symlinks, not copies),
# swapped in with two renames so a running plugin never sees a half-copied bundle. `make uninstall` removes
# exactly these (the conf only while it is the example unchanged), never a directory it did not create.
install: build
	install -d $(DESTDIR)$(CNI_BIN_DIR) $(DESTDIR)$(CNI_CONF_DIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	rm -rf $(DESTDIR)$(CNI_BIN_DIR)/.cni-calico.new $(DESTDIR)$(CNI_BIN_DIR)/.cni-calico.old
	cp -a dist/cni-calico $(DESTDIR)$(CNI_BIN_DIR)/.cni-calico.new
	if [ -e $(DESTDIR)$(CNI_BIN_DIR)/cni-calico ]; then \
		mv $(DESTDIR)$(CNI_BIN_DIR)/cni-calico $(DESTDIR)$(CNI_BIN_DIR)/.cni-calico.old; fi
	mv $(DESTDIR)$(CNI_BIN_DIR)/.cni-calico.new $(DESTDIR)$(CNI_BIN_DIR)/cni-calico
	rm -rf $(DESTDIR)$(CNI_BIN_DIR)/.cni-calico.old
	for name in calico calico-ipam; do ln -sfn cni-calico/calico $(DESTDIR)$(CNI_BIN_DIR)/$$name; done
	if [ "$(INSTALL_FORM)" = venv ]; then $(PY) build/make_launcher.py $(DESTDIR)$(CNI_BIN_DIR) calico calico-ipam; fi
	target=$$(realpath -s -m --relative-to=$(BINDIR) $(CNI_BIN_DIR)/cni-calico/calico) && \
		for name in calicoctl calico-node; do ln -sfn $$target $(DESTDIR)$(BINDIR)/$$name; done
	sed 's|^ExecStart=.*|ExecStart=$(BINDIR)/calico-node|' examples/calico-node.service \
		> $(DESTDIR)$(SYSTEMD_UNIT_DIR)/.calico-node.service.new
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/.calico-node.service.new
	mv $(DESTDIR)$(SYSTEMD_UNIT_DIR)/.calico-node.service.new $(DESTDIR)$(SYSTEMD_UNIT_DIR)/calico-node.service
	if [ -e $(DESTDIR)$(CNI_CONF_DIR)/10-calico.conf ]; then \
		echo "kept $(DESTDIR)$(CNI_CONF_DIR)/10-calico.conf (the example is examples/10-calico.conf)"; \
	else install -m 0644 examples/10-calico.conf $(DESTDIR)$(CNI_CONF_DIR)/10-calico.conf; fi
	install -d $(DESTDIR)$(BASH_COMPLETION_DIR)
	dist/bin/calicoctl completion bash > $(DESTDIR)$(BASH_COMPLETION_DIR)/calicoctl

uninstall:
	rm -f $(DESTDIR)$(CNI_BIN_DIR)/calico $(DESTDIR)$(CNI_BIN_DIR)/calico-ipam
	rm -rf $(DESTDIR)$(CNI_BIN_DIR)/cni-calico $(DESTDIR)$(CNI_BIN_DIR)/.cni-calico-build
	rm -f $(DESTDIR)$(BINDIR)/calicoctl $(DESTDIR)$(BINDIR)/calico-node
	rm -f $(DESTDIR)$(SYSTEMD_UNIT_DIR)/calico-node.service
	rm -f $(DESTDIR)$(BASH_COMPLETION_DIR)/calicoctl
	conf=$(DESTDIR)$(CNI_CONF_DIR)/10-calico.conf; \
	if cmp -s $$conf examples/10-calico.conf; then rm -f $$conf; \
	elif [ -e $$conf ]; then echo "kept $$conf: it is not the example any more (yours to remove)"; fi

# A Debian package of the bundle, built offline with dpkg-deb: dist/cni-calico_<version>_<arch>.deb.
# Layout and choices: build/deb/build-deb.sh.
deb: build
	bash build/deb/build-deb.sh

# Two simulated nodes, pods networked by the real binaries, pings and iperf3; removes all it made.
demo: deps build
	CNI_CALICO_BIN=$(CURDIR)/dist/bin $(PY) examples/demo.py

# ADD/DEL timings of the bundle (and the venv) against Debian's ptp + host-local; BENCH_ARGS="--cycles 100".
bench: deps build
	$(PY) -m tests.bench.bench_cni $(BENCH_ARGS)
	$(PY) -m tests.bench.bench_fastpath
	$(PY) -m tests.bench.bench_node
	$(PY) -m tests.bench.bench_tunnels
	$(PY) -m tests.bench.bench_policy
	$(PY) -m tests.bench.bench_scale

# A real kube-apiserver for the Kubernetes tests (issue 17), built from the k8s.io/kubernetes module
# by tests/kube/go.mod (staging modules pinned to the matching v0.x). Cached outside the checkout,
# keyed by version, and skipped when the binary is there; niced, since the build takes the cores.
KUBE_VERSION := v1.37.2
KUBE_CACHE ?= /var/cache/cni-calico
KUBE_APISERVER := $(KUBE_CACHE)/kube-apiserver-$(KUBE_VERSION)

.PHONY: kube-apiserver kube-apiserver-if-go
kube-apiserver: $(KUBE_APISERVER)

kube-apiserver-if-go:
	@if command -v go >/dev/null; then $(MAKE) --no-print-directory kube-apiserver crictl || \
		echo "kube-apiserver could not be built: the Kubernetes API tests will skip"; \
	else echo "no Go toolchain: the Kubernetes API tests will skip"; fi

$(KUBE_APISERVER):
	mkdir -p $(KUBE_CACHE)
	cd tests/kube && nice -n 19 go build -trimpath -ldflags='-s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37' -o $@.tmp k8s.io/kubernetes/cmd/kube-apiserver
	mv $@.tmp $@

# crictl (cri-tools), playing the kubelet against containerd's CRI in tests/integration/test_cri.py.
CRICTL_VERSION := v1.37.0
CRICTL := $(KUBE_CACHE)/crictl-$(CRICTL_VERSION)

.PHONY: crictl
crictl: $(CRICTL)

$(CRICTL):
	mkdir -p $(KUBE_CACHE)/.crictl-build
	GOBIN=$(KUBE_CACHE)/.crictl-build nice -n 19 go install -trimpath \
		-ldflags="-X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRICTL_VERSION)" sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)
	mv $(KUBE_CACHE)/.crictl-build/crictl $@

clean:
	rm -rf dist build/work $(VENV) *.egg-info
