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
