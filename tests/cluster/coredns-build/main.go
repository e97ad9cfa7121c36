// Command coredns is CoreDNS with only the plugins a cluster DNS needs (the
// ones in kubeadm's default Corefile, minus metrics and loadbalance), so that it
// builds in a fraction of the time of the full plugin set. The entry point is
// the same as CoreDNS's own main.go; only the plugin list differs.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	// The plugin chain's order: CoreDNS's own (core/dnsserver/zdirectives.go),
	// restricted to the plugins imported above.
	dnsserver.Directives = []string{
		"reload", "ready", "health", "errors", "log", "cache", "kubernetes", "loop", "forward",
	}
}

func main() {
	coremain.Run()
}
