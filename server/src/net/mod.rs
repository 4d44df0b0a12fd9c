//! Protocol front ends: the native-protocol connections and the admin HTTP listener.

pub mod admin;
pub mod native;
