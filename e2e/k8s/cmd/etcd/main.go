// etcd, built from go.etcd.io/etcd/server/v3 pinned in ./go.mod. This directory is
// its own Go module so that etcd's gRPC/OpenTelemetry versions stay out of the
// Kubernetes build. Same main as upstream server/main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
