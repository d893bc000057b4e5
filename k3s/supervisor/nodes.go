package main

import (
	"context"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// nodeWatch keeps the Nodes in a cache (k3s: the wrangler Node controller the tunnel server and
// the node-password controller watch).
type nodeWatch struct {
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
}

func newNodeWatch(client kubernetes.Interface) *nodeWatch {
	f := informers.NewSharedInformerFactory(client, 10*time.Minute)
	return &nodeWatch{factory: f, informer: f.Core().V1().Nodes().Informer()}
}

func (w *nodeWatch) run(ctx context.Context) {
	w.factory.Start(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), w.informer.HasSynced)
}

func (w *nodeWatch) list() []*corev1.Node {
	var out []*corev1.Node
	for _, o := range w.informer.GetStore().List() {
		if n, ok := o.(*corev1.Node); ok {
			out = append(out, n)
		}
	}
	return out
}

// byIP finds the Node with this InternalIP or ExternalIP (one for which preferred holds, if any),
// and its kubelet port (the tunnel server's CIDR ranger of node addresses,
// pkg/daemons/control/tunnel.go onChangeNode).
func (w *nodeWatch) byIP(ip string, preferred func(name string) bool) (name, kubeletPort string, found bool) {
	for _, n := range w.list() {
		if n.DeletionTimestamp != nil {
			continue
		}
		for _, a := range n.Status.Addresses {
			if (a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP) && a.Address == ip {
				// Several Nodes may carry one address (a node gone without its Node object being
				// deleted, and a new one at its address): the one with a tunnel session wins.
				if !found || preferred(n.Name) {
					name, kubeletPort, found = n.Name, strconv.Itoa(int(n.Status.DaemonEndpoints.KubeletEndpoint.Port)), true
				}
				if preferred(n.Name) {
					return name, kubeletPort, true
				}
			}
		}
	}
	return name, kubeletPort, found
}
