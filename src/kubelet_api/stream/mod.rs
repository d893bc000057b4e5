//! Streaming endpoints of the kubelet API: exec, attach and port-forward.

pub mod spdy;
