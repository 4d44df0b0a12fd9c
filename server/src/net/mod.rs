//! Protocol front ends: the native protocol, the Kafka API, and the admin
//! HTTP listener; `conn.rs` has what connections share.

pub mod admin;
pub mod conn;
pub mod kafka;
pub mod native;
