use domain::{Event, EventKind, NewEvent};
use rusqlite::types::Value;
use rusqlite::{params, Row};

use crate::{Store, StoreError};

/// How many events a query returns when the caller does not say.
const DEFAULT_EVENT_LIMIT: u32 = 1000;
/// The most events one query returns, so a careless client cannot make Flowers load the
/// whole log into memory; larger limits are lowered to this.
const MAX_EVENT_LIMIT: u32 = 10_000;

/// Which Events [`Store::events`] returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventFilter {
    /// Only events with a larger id (SSE's `Last-Event-ID`).
    pub after_id: Option<i64>,
    /// Only events about this service or job.
    pub owner: Option<String>,
    /// Only events about this Run.
    pub run: Option<String>,
    /// At most this many: 1000 by default, never more than 10000.
    pub limit: Option<u32>,
    /// When true, the last `limit` matching events instead of the first (still ascending).
    pub newest: bool,
}

impl Store {
    /// Appends an Event, stamping it with the next id and the current time.
    pub fn append_event(&self, event: &NewEvent) -> Result<Event, StoreError> {
        let time_ms = domain::now_ms();
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "INSERT INTO events (time_ms, kind, owner, run, device, message) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        stmt.execute(params![
            time_ms,
            event.kind.as_str(),
            event.owner,
            event.run,
            event.device,
            event.message,
        ])?;
        Ok(Event {
            id: conn.last_insert_rowid(),
            time_ms,
            kind: event.kind,
            owner: event.owner.clone(),
            run: event.run.clone(),
            device: event.device.clone(),
            message: event.message.clone(),
        })
    }

    /// Events matching `filter`, in ascending id order.
    pub fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let limit = filter
            .limit
            .unwrap_or(DEFAULT_EVENT_LIMIT)
            .min(MAX_EVENT_LIMIT);
        let mut sql = String::from(
            "SELECT id, time_ms, kind, owner, run, device, message FROM events WHERE 1 = 1",
        );
        let mut values: Vec<Value> = Vec::new();
        if let Some(after_id) = filter.after_id {
            values.push(Value::Integer(after_id));
            sql.push_str(&format!(" AND id > ?{}", values.len()));
        }
        if let Some(owner) = &filter.owner {
            values.push(Value::Text(owner.clone()));
            sql.push_str(&format!(" AND owner = ?{}", values.len()));
        }
        if let Some(run) = &filter.run {
            values.push(Value::Text(run.clone()));
            sql.push_str(&format!(" AND run = ?{}", values.len()));
        }
        // The newest N are found walking backwards, then put back in ascending order below.
        let order = if filter.newest { "DESC" } else { "ASC" };
        values.push(Value::Integer(limit.into()));
        sql.push_str(&format!(" ORDER BY id {order} LIMIT ?{}", values.len()));

        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
        let mut events = Vec::new();
        while let Some(row) = rows.next()? {
            events.push(event_from_row(row)?);
        }
        if filter.newest {
            events.reverse();
        }
        Ok(events)
    }
}

fn event_from_row(row: &Row<'_>) -> Result<Event, StoreError> {
    let id: i64 = row.get(0)?;
    let kind_text: String = row.get(2)?;
    let kind = EventKind::parse(&kind_text).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "events.kind of event {id}: unknown event kind {kind_text:?}"
        ))
    })?;
    Ok(Event {
        id,
        time_ms: row.get(1)?,
        kind,
        owner: row.get(3)?,
        run: row.get(4)?,
        device: row.get(5)?,
        message: row.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_store;

    fn ids(events: &[Event]) -> Vec<i64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn append_stamps_increasing_ids_and_reads_back_equal() {
        let (_dir, store) = temp_store();
        let before = domain::now_ms();
        let first = store
            .append_event(
                &NewEvent::new(EventKind::RunExited, "exited code=137 (SIGKILL)")
                    .owner("chat")
                    .run("chat-1")
                    .device("gpu0"),
            )
            .unwrap();
        let second = store
            .append_event(&NewEvent::new(EventKind::FlowersStarted, "up"))
            .unwrap();
        assert!(second.id > first.id);
        assert!(first.time_ms >= before);
        assert_eq!(first.kind, EventKind::RunExited);
        assert_eq!(first.device.as_deref(), Some("gpu0"));
        let all = store.events(&EventFilter::default()).unwrap();
        assert_eq!(all, vec![first, second]);
    }

    #[test]
    fn filters_by_after_id_owner_and_run() {
        let (_dir, store) = temp_store();
        let mut appended = Vec::new();
        for (owner, run) in [
            ("chat", "chat-1"),
            ("train", "train-2"),
            ("chat", "chat-3"),
            ("chat", "chat-1"),
        ] {
            appended.push(
                store
                    .append_event(
                        &NewEvent::new(EventKind::RunStarted, "x")
                            .owner(owner)
                            .run(run),
                    )
                    .unwrap(),
            );
        }
        store
            .append_event(&NewEvent::new(EventKind::DevicesDetected, "no owner"))
            .unwrap();
        let query = |filter: EventFilter| ids(&store.events(&filter).unwrap());
        assert_eq!(
            query(EventFilter {
                owner: Some("chat".into()),
                ..Default::default()
            }),
            ids(&[
                appended[0].clone(),
                appended[2].clone(),
                appended[3].clone()
            ])
        );
        assert_eq!(
            query(EventFilter {
                run: Some("chat-1".into()),
                ..Default::default()
            }),
            vec![appended[0].id, appended[3].id]
        );
        assert_eq!(
            query(EventFilter {
                after_id: Some(appended[1].id),
                owner: Some("chat".into()),
                ..Default::default()
            }),
            vec![appended[2].id, appended[3].id]
        );
        assert_eq!(
            query(EventFilter {
                after_id: Some(appended[3].id + 1),
                ..Default::default()
            }),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn limit_takes_the_oldest_or_with_newest_the_latest_still_ascending() {
        let (_dir, store) = temp_store();
        let all: Vec<i64> = (0..10)
            .map(|i| {
                store
                    .append_event(&NewEvent::new(EventKind::RunReady, format!("{i}")))
                    .unwrap()
                    .id
            })
            .collect();
        let query = |filter: EventFilter| ids(&store.events(&filter).unwrap());
        assert_eq!(
            query(EventFilter {
                limit: Some(3),
                ..Default::default()
            }),
            all[..3]
        );
        assert_eq!(
            query(EventFilter {
                limit: Some(3),
                newest: true,
                ..Default::default()
            }),
            all[7..]
        );
        assert_eq!(
            query(EventFilter {
                limit: Some(3),
                newest: true,
                after_id: Some(all[8]),
                ..Default::default()
            }),
            all[9..]
        );
        assert_eq!(
            query(EventFilter {
                limit: Some(0),
                ..Default::default()
            }),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn the_default_limit_is_1000_and_the_largest_10000() {
        let (_dir, store) = temp_store();
        {
            let mut conn = store.lock();
            let tx = conn.transaction().unwrap();
            for _ in 0..10_050 {
                tx.execute(
                    "INSERT INTO events (time_ms, kind, message) VALUES (0, 'run_started', '')",
                    [],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        assert_eq!(store.events(&EventFilter::default()).unwrap().len(), 1000);
        let huge = store
            .events(&EventFilter {
                limit: Some(u32::MAX),
                newest: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(huge.len(), 10_000);
        assert_eq!(huge.last().unwrap().id, 10_050);
    }

    #[test]
    fn ids_are_never_reused_after_the_newest_row_is_removed() {
        let (_dir, store) = temp_store();
        let first = store
            .append_event(&NewEvent::new(EventKind::RunReady, "a"))
            .unwrap();
        // Nothing in Flowers deletes events; someone with the sqlite3 CLI might.
        store.lock().execute("DELETE FROM events", []).unwrap();
        let second = store
            .append_event(&NewEvent::new(EventKind::RunReady, "b"))
            .unwrap();
        assert!(second.id > first.id);
    }

    #[test]
    fn an_unknown_kind_is_corrupt_naming_the_event() {
        let (_dir, store) = temp_store();
        let event = store
            .append_event(&NewEvent::new(EventKind::RunReady, "a"))
            .unwrap();
        store
            .lock()
            .execute("UPDATE events SET kind = 'run_exploded'", [])
            .unwrap();
        let err = store.events(&EventFilter::default()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(message.contains("run_exploded"), "{message}");
        assert!(
            message.contains(&format!("event {}", event.id)),
            "{message}"
        );
    }
}
