//! Broker and mail clients kept between sends, one per connection configuration.
//!
//! Connecting (TCP, TLS, a login, a broker's handshake) costs more than most sends, and a
//! connection per notification floods a broker's connection log. So a [`Pool`] keeps one
//! client per distinct configuration (the key: everything that decides where and as whom it
//! connects), made on first use and shared by every send that has the same key. A client
//! unused for [`IDLE`] is dropped (which closes it), so a deleted channel, or one whose broker
//! is gone, does not hold a connection open; past [`MAX_CLIENTS`] configurations the pool
//! starts over. A send that fails with a retryable error drops its client: the connection may
//! be the problem, and the next send connects afresh.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::NotifyError;

/// A client unused this long is dropped.
pub const IDLE: Duration = Duration::from_secs(15 * 60);

/// Distinct configurations kept; past this the pool starts over.
pub const MAX_CLIENTS: usize = 64;

/// Clients of type `C` by connection configuration `K`.
pub struct Pool<K, C> {
    /// A std mutex: it is held only to look a slot up, never across an await. Each slot's
    /// cell is where a connection is being made, so sends with the same key wait for one
    /// connection rather than each making their own.
    slots: Mutex<HashMap<K, Slot<C>>>,
    /// [`IDLE`], but for tests.
    idle: Duration,
}

struct Slot<C> {
    client: Arc<OnceCell<C>>,
    used: Instant,
}

impl<K, C> Default for Pool<K, C> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            idle: IDLE,
        }
    }
}

impl<K: Hash + Eq + Clone, C: Clone> Pool<K, C> {
    /// The client for `key`, made with `connect` if there is none; and whether it was made
    /// now (rather than taken from the pool).
    async fn get<F, Fut>(
        &self,
        key: &K,
        connect: F,
    ) -> Result<(Arc<OnceCell<C>>, C, bool), NotifyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, NotifyError>>,
    {
        let cell = {
            let now = Instant::now();
            let mut slots = self.slots.lock().expect("client pool poisoned");
            slots.retain(|_, s| now.duration_since(s.used) < self.idle);
            if slots.len() >= MAX_CLIENTS && !slots.contains_key(key) {
                slots.clear();
            }
            let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
                client: Arc::new(OnceCell::new()),
                used: now,
            });
            slot.used = now;
            slot.client.clone()
        };
        let mut fresh = false;
        let client = cell
            .get_or_try_init(|| {
                fresh = true;
                connect()
            })
            .await?
            .clone();
        Ok((cell, client, fresh))
    }

    /// Drops the clients unused for [`IDLE`]. Each use sweeps its pool too; this is for a pool
    /// nothing uses any more (the worker calls it as it goes round).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.slots
            .lock()
            .expect("client pool poisoned")
            .retain(|_, s| now.duration_since(s.used) < self.idle);
    }

    /// Drops the client in `cell` if it is still the one kept for `key` (another send may
    /// already have replaced it).
    fn forget(&self, key: &K, cell: &Arc<OnceCell<C>>) {
        let mut slots = self.slots.lock().expect("client pool poisoned");
        if slots.get(key).is_some_and(|s| Arc::ptr_eq(&s.client, cell)) {
            slots.remove(key);
        }
    }

    /// The kept client for `key` (made with `connect` if there is none), for clients that
    /// reconnect by themselves (Kafka's producer): no send error drops it.
    pub async fn client<F, Fut>(&self, key: &K, connect: F) -> Result<C, NotifyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, NotifyError>>,
    {
        self.get(key, connect).await.map(|(_, client, _)| client)
    }

    /// Runs `send` with the kept client for `key` (made with `connect` if there is none).
    ///
    /// A retryable failure drops the client. If that client came from the pool, its
    /// connection may simply have been closed meanwhile (the broker restarted, a proxy timed
    /// it out), so `send` goes once more on a fresh connection: the notification is then
    /// sent at least once, as the outbox promises anyway.
    pub async fn send<F, Fut, S, SFut>(
        &self,
        key: &K,
        connect: F,
        send: S,
    ) -> Result<(), NotifyError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<C, NotifyError>>,
        S: Fn(C) -> SFut,
        SFut: Future<Output = Result<(), NotifyError>>,
    {
        let (cell, client, fresh) = self.get(key, &connect).await?;
        match send(client).await {
            Err(e) if e.retryable => {
                self.forget(key, &cell);
                if fresh {
                    return Err(e);
                }
            }
            done => return done,
        }
        let (cell, client, _) = self.get(key, &connect).await?;
        let result = send(client).await;
        if matches!(&result, Err(e) if e.retryable) {
            self.forget(key, &cell);
        }
        result
    }

    /// How many clients are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().expect("client pool poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_connection_per_key_and_a_retryable_failure_reconnects() {
        let pool: Pool<&str, usize> = Pool::default();
        let connects = AtomicUsize::new(0);
        let connect = || async { Ok(connects.fetch_add(1, Ordering::SeqCst)) };
        for _ in 0..3 {
            pool.send(&"a", connect, |_| async { Ok(()) })
                .await
                .expect("sent");
        }
        assert_eq!(
            connects.load(Ordering::SeqCst),
            1,
            "one connection for three sends"
        );
        pool.send(&"b", connect, |_| async { Ok(()) })
            .await
            .expect("sent");
        assert_eq!(
            connects.load(Ordering::SeqCst),
            2,
            "another key, another client"
        );
        assert_eq!(pool.len(), 2);

        // The kept client (0) fails as a closed connection would: a fresh one (2) is made and
        // the send goes again on it, once.
        let used = Mutex::new(Vec::new());
        pool.send(&"a", connect, |c| {
            used.lock().expect("lock").push(c);
            async move {
                if c == 0 {
                    Err(NotifyError::retry("connection closed"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .expect("sent on the fresh connection");
        assert_eq!(*used.lock().expect("lock"), vec![0, 2]);

        // A fresh client that fails is not retried, and is dropped.
        let err = pool
            .send(&"c", connect, |_| async { Err(NotifyError::retry("down")) })
            .await
            .expect_err("fails");
        assert!(err.retryable);
        assert_eq!(pool.len(), 2, "the failed client is not kept");

        // A refusal of the message keeps the connection.
        pool.send(&"a", connect, |_| async {
            Err(NotifyError::permanent("too big"))
        })
        .await
        .expect_err("refused");
        let before = connects.load(Ordering::SeqCst);
        pool.send(&"a", connect, |_| async { Ok(()) })
            .await
            .expect("sent");
        assert_eq!(connects.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn a_client_idle_too_long_is_dropped() {
        let pool: Pool<&str, usize> = Pool {
            idle: Duration::from_millis(200),
            ..Pool::default()
        };
        pool.client(&"a", || async { Ok(1) })
            .await
            .expect("connects");
        pool.sweep();
        assert_eq!(pool.len(), 1, "not idle long enough");
        let c = pool.client(&"a", || async { Ok(2) }).await.expect("kept");
        assert_eq!(c, 1, "used again: kept");
        tokio::time::sleep(Duration::from_millis(250)).await;
        pool.sweep();
        assert_eq!(pool.len(), 0, "idle long enough: dropped");
        let c = pool
            .client(&"a", || async { Ok(3) })
            .await
            .expect("connects");
        assert_eq!(c, 3, "a new client");
    }

    #[tokio::test]
    async fn a_failed_connection_is_not_kept() {
        let pool: Pool<&str, usize> = Pool::default();
        let err = pool
            .client(&"a", || async { Err(NotifyError::retry("refused")) })
            .await
            .expect_err("fails");
        assert!(err.retryable);
        let c = pool
            .client(&"a", || async { Ok(7) })
            .await
            .expect("connects");
        assert_eq!(c, 7);
    }
}
