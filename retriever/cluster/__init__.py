"""Scale-out: the root server's view of a sharded collection — per shard, a set of replica processes."""
