//! The vocabulary Levee's crates share: settings and names that the broker,
//! the engine, the clients, the command line and the load generator read
//! the same way, so that each rule is written once: the fsync policy
//! ([`FsyncPolicy`]), which CPUs to run shards on ([`CoreSpec`]), and what
//! makes a topic or group name valid ([`validate_topic_name`]), and the one
//! single-threaded notification primitive the shards and the coordinator
//! wait on ([`LocalEvent`]), and how to tell a full disk from a failing
//! one ([`is_out_of_space`]). It must not do I/O, keep global state, or
//! depend on any other crate (of Levee or not), so that every crate can
//! depend on it.

pub mod cores;
pub mod event;
pub mod fsync;
pub mod names;
pub mod space;

pub use cores::{parse_cpu_list, CoreSpec};
pub use event::LocalEvent;
pub use fsync::FsyncPolicy;
pub use names::{
    group_partition, is_internal_topic, validate_group_name, validate_topic_name, OFFSETS_TOPIC,
    TXN_TOPIC,
};
pub use space::is_out_of_space;
