//! Topic and consumer-group names: Kafka's rules, 1 to 249 of
//! `[a-zA-Z0-9._-]`, not `.` or `..` (a topic name is a directory name).

/// The longest name Kafka accepts.
const NAME_BYTES_MAX: usize = 249;

/// Kafka's topic name rules: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    validate("topic", name)
}

/// A consumer group's name: the same rules as a topic's.
pub fn validate_group_name(name: &str) -> Result<(), String> {
    validate("group", name)
}

fn validate(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "{kind} name must be 1 to {NAME_BYTES_MAX} characters, `{name}` has {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{kind} name cannot be `.` or `..`"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{kind} name `{name}` has `{c}`; use only letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn the_limits_and_the_messages() {
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("é").is_err());
        assert_eq!(
            validate_topic_name("a b").unwrap_err(),
            "topic name `a b` has ` `; use only letters, digits, `.`, `_` and `-`"
        );
        assert!(validate_group_name("g-1").is_ok());
        assert_eq!(
            validate_group_name("").unwrap_err(),
            "group name must be 1 to 249 characters, `` has 0"
        );
        assert_eq!(
            validate_group_name("..").unwrap_err(),
            "group name cannot be `.` or `..`"
        );
    }
}

/// The internal topic that holds consumer groups' state (committed offsets
/// and generations): a group lives in one of its partitions, and the
/// leader of that partition coordinates the group.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The internal topic of transaction state: the leader of the partition a
/// transactional id hashes to ([`group_partition`]) is its coordinator.
pub const TXN_TOPIC: &str = "__transaction_state";

/// The partition of [`OFFSETS_TOPIC`] (of `partitions`) that holds `group`:
/// a stable hash of the name (FNV-1a, 32 bits), the same in brokers and
/// clients.
pub fn group_partition(group: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in group.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

/// Whether a topic is internal (its name starts with `__`): kept by the
/// broker itself, hidden from plain topic listings.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__")
}

#[cfg(test)]
mod group_tests {
    use super::*;

    #[test]
    fn group_partitions_are_stable_and_spread() {
        // Fixed values: brokers and clients of any version must agree.
        assert_eq!(group_partition("", 16), 0x811c_9dc5 % 16);
        assert_eq!(group_partition("a", 1), 0);
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[group_partition(&format!("group-{i}"), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(group_partition("x", 0), 0);
    }
}
