// Package kafkatest holds helpers for tests against franz-go's in-memory
// broker (kfake) that the packages below internal/relaytest can use too.
package kafkatest

import (
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// ServeTopicConfigs makes cluster answer every DescribeConfigs request with
// configs, for each resource asked about, instead of its own settings: kfake
// knows only some topic settings (not message.timestamp.before.max.ms, say).
func ServeTopicConfigs(cluster *kfake.Cluster, configs map[string]string) {
	cluster.ControlKey(int16(kmsg.DescribeConfigs), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		req := kreq.(*kmsg.DescribeConfigsRequest)
		resp := req.ResponseKind().(*kmsg.DescribeConfigsResponse)
		for _, rr := range req.Resources {
			res := kmsg.NewDescribeConfigsResponseResource()
			res.ResourceType, res.ResourceName = rr.ResourceType, rr.ResourceName
			for k, v := range configs {
				c := kmsg.NewDescribeConfigsResponseResourceConfig()
				c.Name, c.Value = k, kmsg.StringPtr(v)
				res.Configs = append(res.Configs, c)
			}
			resp.Resources = append(resp.Resources, res)
		}
		return resp, nil, true
	})
}
