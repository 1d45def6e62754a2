"""calico-kube-controllers for the etcd datastore: Kubernetes objects followed into Calico resources.

client.py     the Kubernetes API: requests, paged lists, streaming watches (stdlib http.client + ssl)
reflector.py  list + watch one collection forever: resourceVersion, bookmarks, 410 Gone → relist,
              reconnect with back-off; hands a handler whole lists (reconcile) and single events
convert.py    Calico's converters (libcalico-go conversion.go, kube-controllers' converter/), pure
writer.py     the Calico resources a controller owns, written to etcd only when they differ
controllers.py policy, namespace, service account, workload endpoint labels
nodes.py      Kubernetes Node deleted → the Calico node and its IPAM released (calicoctl's clean-up);
              IPAM leak collection; the Node's labels synced onto the Calico node
config.py     where etcd and the API are (the environment)
runconfig.py  KubeControllersConfiguration merged with Calico's variables → what runs, and the status (pure)
settings.py   KubeControllersConfiguration `default` in etcd: created, its status written, followed
main.py       the threads (reflectors, periods, compaction, health, metrics); a restart on a change
"""
