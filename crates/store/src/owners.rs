use domain::{Name, OwnerKind};
use rusqlite::{params, Row};

use crate::{narrow, owner_kind_text, parse_owner_kind, Store, StoreError};

/// A Service's or Job's restart bookkeeping, kept across restarts of Flowers so that a crash
/// loop is still recognised after Flowers itself comes back.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnerState {
    pub name: String,
    pub kind: OwnerKind,
    pub consecutive_failures: u32,
    pub crash_loop: bool,
    pub updated_ms: i64,
}

/// A Service or Job added at run time (not from `flowers.toml`), kept as the JSON of its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSpec {
    pub name: String,
    pub kind: OwnerKind,
    pub spec_json: String,
    pub updated_ms: i64,
}

fn check_name(name: &str, what: &str) -> Result<(), StoreError> {
    Name::new(name)
        .map(drop)
        .map_err(|err| StoreError::invalid(what, err.to_string()))
}

impl Store {
    /// The bookkeeping of one Service or Job, or `None` if it never had any.
    pub fn owner_state(&self, name: &str) -> Result<Option<OwnerState>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT name, kind, consecutive_failures, crash_loop, updated_ms \
             FROM owner_states WHERE name = ?1",
        )?;
        let mut rows = stmt.query([name])?;
        rows.next()?.map(owner_state_from_row).transpose()
    }

    /// Creates or replaces the bookkeeping of one Service or Job.
    pub fn put_owner_state(&self, state: &OwnerState) -> Result<(), StoreError> {
        check_name(&state.name, "owner name")?;
        self.lock()
            .prepare_cached(
                "INSERT INTO owner_states (name, kind, consecutive_failures, crash_loop, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, \
                 consecutive_failures = excluded.consecutive_failures, \
                 crash_loop = excluded.crash_loop, updated_ms = excluded.updated_ms",
            )?
            .execute(params![
                state.name,
                owner_kind_text(state.kind),
                state.consecutive_failures,
                state.crash_loop,
                state.updated_ms,
            ])?;
        Ok(())
    }

    /// Creates or replaces a run-time Service or Job; `spec_json` must be valid JSON.
    pub fn put_spec(&self, name: &str, kind: OwnerKind, spec_json: &str) -> Result<(), StoreError> {
        check_name(name, "spec name")?;
        // The store does not know the shape of a spec, but it refuses to keep text that can
        // never be read back as one.
        serde_json::from_str::<serde_json::Value>(spec_json).map_err(|err| {
            StoreError::invalid(format!("spec of {name}"), format!("not valid JSON: {err}"))
        })?;
        self.lock()
            .prepare_cached(
                "INSERT INTO specs (name, kind, spec_json, updated_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, \
                 spec_json = excluded.spec_json, updated_ms = excluded.updated_ms",
            )?
            .execute(params![
                name,
                owner_kind_text(kind),
                spec_json,
                domain::now_ms()
            ])?;
        Ok(())
    }

    /// Removes a run-time Service or Job; false if there was none by that name.
    pub fn remove_spec(&self, name: &str) -> Result<bool, StoreError> {
        let removed = self
            .lock()
            .execute("DELETE FROM specs WHERE name = ?1", [name])?;
        Ok(removed > 0)
    }

    /// Every run-time Service and Job, by name.
    pub fn specs(&self) -> Result<Vec<StoredSpec>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT name, kind, spec_json, updated_ms FROM specs ORDER BY name")?;
        let mut rows = stmt.query([])?;
        let mut specs = Vec::new();
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            let kind_text: String = row.get(1)?;
            specs.push(StoredSpec {
                kind: parse_owner_kind(&kind_text, || format!("specs.kind of {name}"))?,
                spec_json: row.get(2)?,
                updated_ms: row.get(3)?,
                name,
            });
        }
        Ok(specs)
    }
}

fn owner_state_from_row(row: &Row<'_>) -> Result<OwnerState, StoreError> {
    let name: String = row.get(0)?;
    let place = |column: &str| format!("owner_states.{column} of {name}");
    let crash_loop = match row.get::<_, i64>(3)? {
        0 => false,
        1 => true,
        other => {
            return Err(StoreError::Corrupt(format!(
                "{}: expected 0 or 1, got {other}",
                place("crash_loop")
            )))
        }
    };
    Ok(OwnerState {
        kind: parse_owner_kind(&row.get::<_, String>(1)?, || place("kind"))?,
        consecutive_failures: narrow(row.get(2)?, || place("consecutive_failures"))?,
        crash_loop,
        updated_ms: row.get(4)?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_store;

    #[test]
    fn owner_state_is_created_replaced_and_read_back() {
        let (_dir, store) = temp_store();
        assert_eq!(store.owner_state("chat").unwrap(), None);
        let mut state = OwnerState {
            name: "chat".into(),
            kind: OwnerKind::Service,
            consecutive_failures: 3,
            crash_loop: false,
            updated_ms: 100,
        };
        store.put_owner_state(&state).unwrap();
        assert_eq!(store.owner_state("chat").unwrap(), Some(state.clone()));
        state.consecutive_failures = 5;
        state.crash_loop = true;
        state.updated_ms = 200;
        store.put_owner_state(&state).unwrap();
        assert_eq!(store.owner_state("chat").unwrap(), Some(state));
        assert_eq!(store.owner_state("train").unwrap(), None);
    }

    #[test]
    fn owner_state_refuses_bad_names_and_reports_bad_rows() {
        let (_dir, store) = temp_store();
        let err = store
            .put_owner_state(&OwnerState {
                name: "Not Valid".into(),
                kind: OwnerKind::Job,
                consecutive_failures: 0,
                crash_loop: false,
                updated_ms: 0,
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
        store
            .lock()
            .execute(
                "INSERT INTO owner_states VALUES ('train', 'job', 1, 7, 0)",
                [],
            )
            .unwrap();
        let err = store.owner_state("train").unwrap_err();
        assert!(
            err.to_string().contains("owner_states.crash_loop of train"),
            "{err}"
        );
        store
            .lock()
            .execute(
                "UPDATE owner_states SET crash_loop = 0, kind = 'daemon'",
                [],
            )
            .unwrap();
        let err = store.owner_state("train").unwrap_err();
        assert!(err.to_string().contains("daemon"), "{err}");
    }

    #[test]
    fn specs_are_put_replaced_listed_and_removed() {
        let (_dir, store) = temp_store();
        assert!(store.specs().unwrap().is_empty());
        store
            .put_spec("web", OwnerKind::Service, r#"{"port": 1}"#)
            .unwrap();
        store
            .put_spec("etl", OwnerKind::Job, r#"{"a": [1, 2]}"#)
            .unwrap();
        store
            .put_spec("web", OwnerKind::Service, r#"{"port": 2}"#)
            .unwrap();
        let specs = store.specs().unwrap();
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["etl", "web"]);
        assert_eq!(specs[0].kind, OwnerKind::Job);
        assert_eq!(specs[1].spec_json, r#"{"port": 2}"#);
        assert!(specs[1].updated_ms > 0);
        assert!(store.remove_spec("web").unwrap());
        assert!(!store.remove_spec("web").unwrap());
        assert_eq!(store.specs().unwrap().len(), 1);
    }

    #[test]
    fn put_spec_refuses_bad_names_and_bad_json() {
        let (_dir, store) = temp_store();
        let err = store
            .put_spec("web", OwnerKind::Service, "{not json")
            .unwrap_err();
        assert!(err.to_string().contains("spec of web"), "{err}");
        let err = store
            .put_spec("Web!", OwnerKind::Service, "{}")
            .unwrap_err();
        assert!(err.to_string().contains("spec name"), "{err}");
        assert!(store.specs().unwrap().is_empty());
        store
            .lock()
            .execute("INSERT INTO specs VALUES ('x', 'thing', '{}', 0)", [])
            .unwrap();
        let err = store.specs().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }
}
