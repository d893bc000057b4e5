//! `vks pods` and `vks logs`.
