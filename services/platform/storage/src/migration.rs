//! Versioned schema migrations. Each backend keeps a `schema_migrations` table of what it applied;
//! at start-up the missing ones are applied in order. A database that knows a version the binary
//! does not, or records a different name for a version, is refused: it was written by other code.

use crate::StorageError;

/// One schema step. `statements` are separated by `;` at the end of a line; on CQL each must be
/// idempotent (`IF NOT EXISTS`), because replicas starting together may apply it twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub statements: &'static str,
}

impl Migration {
    /// The statements one by one, without blank ones and `--` comment lines.
    pub fn split(&self) -> Vec<String> {
        let mut statements = Vec::new();
        let mut current = String::new();
        for line in self.statements.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with("--") {
                continue;
            }
            current.push_str(line);
            current.push('\n');
            if trimmed.ends_with(';') {
                statements.push(current.trim().trim_end_matches(';').trim().to_owned());
                current.clear();
            }
        }
        if !current.trim().is_empty() {
            statements.push(current.trim().to_owned());
        }
        statements
    }
}

/// Checks a migration list (versions strictly increasing from 1) and returns the ones to apply
/// given what the database recorded as `(version, name)`.
pub(crate) fn pending<'a>(
    migrations: &'a [Migration],
    applied: &[(u32, String)],
) -> Result<Vec<&'a Migration>, StorageError> {
    for (index, migration) in migrations.iter().enumerate() {
        if migration.version as usize != index + 1 {
            return Err(StorageError::Migration(format!(
                "migration `{}` has version {}, expected {} (versions count up from 1)",
                migration.name,
                migration.version,
                index + 1
            )));
        }
    }
    for (version, name) in applied {
        match migrations.get((*version as usize).wrapping_sub(1)) {
            None => {
                return Err(StorageError::Migration(format!(
                    "the database is at schema version {version} ({name}) but this binary only knows up to {}; run a newer binary",
                    migrations.len()
                )));
            }
            Some(known) if known.name != name => {
                return Err(StorageError::Migration(format!(
                    "schema version {version} was applied as `{name}` but this binary calls it `{}`; migration history diverged",
                    known.name
                )));
            }
            Some(_) => {}
        }
    }
    let done: Vec<u32> = applied.iter().map(|(version, _)| *version).collect();
    Ok(migrations
        .iter()
        .filter(|m| !done.contains(&m.version))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: Migration = Migration {
        version: 1,
        name: "one",
        statements: "CREATE TABLE a (x INT);\n-- note\nCREATE TABLE b (\n  y INT\n);",
    };
    const TWO: Migration = Migration {
        version: 2,
        name: "two",
        statements: "CREATE TABLE c (z INT)",
    };

    #[test]
    fn statements_split_at_line_ends() {
        assert_eq!(
            ONE.split(),
            vec!["CREATE TABLE a (x INT)", "CREATE TABLE b (\n  y INT\n)"]
        );
        assert_eq!(TWO.split(), vec!["CREATE TABLE c (z INT)"]);
    }

    #[test]
    fn pending_skips_applied_and_refuses_foreign_history() {
        let all = [ONE, TWO];
        assert_eq!(pending(&all, &[]).unwrap().len(), 2);
        assert_eq!(pending(&all, &[(1, "one".into())]).unwrap(), vec![&TWO]);
        assert!(
            pending(&all, &[(3, "three".into())])
                .unwrap_err()
                .to_string()
                .contains("run a newer binary")
        );
        assert!(
            pending(&all, &[(1, "uno".into())])
                .unwrap_err()
                .to_string()
                .contains("diverged")
        );
        assert!(
            pending(&[TWO], &[]).is_err(),
            "versions must count up from 1"
        );
    }
}
