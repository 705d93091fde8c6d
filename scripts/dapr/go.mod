// Builds daprd, placement and scheduler from the Go module proxy.
// github.com/dapr/dapr cannot be `go install`ed because its go.mod has replace directives;
// replace directives only apply in the main module, so they are repeated here.
// scripts/setup.sh copies this file to a build folder and sets the version from versions.env.
// When DAPR_RUNTIME_VERSION changes, compare these with the replace block of dapr's go.mod.
module tiniest-durable-agent/scripts/dapr

go 1.26.5

replace (
	dubbo.apache.org/dubbo-go/v3 => dubbo.apache.org/dubbo-go/v3 v3.0.3-0.20230118042253-4f159a2b38f3
	github.com/chenzhuoyu/iasm => github.com/chenzhuoyu/iasm v0.9.0
	github.com/chzyer/logex => github.com/chzyer/logex v1.2.1
	github.com/gobwas/pool => github.com/gobwas/pool v0.2.1
	github.com/toolkits/concurrent => github.com/niean/gotools v0.0.0-20151221085310-ff3f51fc5c60
	gopkg.in/couchbaselabs/gocbconnstr.v1 => github.com/couchbaselabs/gocbconnstr v1.0.5
)
