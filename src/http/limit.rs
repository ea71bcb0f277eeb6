//! How many API requests run at once (issue 28, finding 2): at most `overall` in the process
//! and `per_caller` for each authenticated user name. A request over either bound waits up to
//! [`QueryLimit::wait`] for a place, then is refused (429 with `Retry-After`), so heavy
//! readers queue among themselves and never pile up on the API's database pool.
//!
//! A place is taken once a request's caller is known (`api::caller`) and held until the
//! handler has answered (a streamed body, e.g. a followed log, holds none: those have their
//! own limit). The place lives in a per-request slot that the [`scope`] middleware opens
//! around every request, so no handler has to carry it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The bounds, from `dag-operator run --api-max-queries*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryBounds {
    /// requests served at once, all callers together
    pub overall: usize,
    /// requests served at once for one user name
    pub per_caller: usize,
    /// how long a request over a bound waits for a place before it is refused
    pub wait: Duration,
}

impl Default for QueryBounds {
    fn default() -> Self {
        QueryBounds {
            overall: 8,
            per_caller: 4,
            wait: Duration::from_secs(1),
        }
    }
}

/// No place within the wait: answered 429, to be asked again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub retry_after: Duration,
}

/// The places.
#[derive(Debug)]
pub struct QueryLimit {
    bounds: QueryBounds,
    overall: Arc<Semaphore>,
    /// one semaphore per user name with a request served or waiting; dropped when idle
    callers: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Default for QueryLimit {
    fn default() -> Self {
        QueryLimit::new(QueryBounds::default())
    }
}

/// A place held: released on drop.
#[derive(Debug)]
pub struct Place {
    _overall: OwnedSemaphorePermit,
    caller: Option<OwnedSemaphorePermit>,
    user: String,
    callers: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        drop(self.caller.take());
        forget_idle(&self.callers, &self.user);
    }
}

/// Drops `user`'s semaphore when nobody holds or waits for it (only the map refers to it).
fn forget_idle(callers: &Mutex<HashMap<String, Arc<Semaphore>>>, user: &str) {
    let mut map = callers.lock().unwrap_or_else(|p| p.into_inner());
    if map.get(user).is_some_and(|s| Arc::strong_count(s) == 1) {
        map.remove(user);
    }
}

impl QueryLimit {
    pub fn new(bounds: QueryBounds) -> Self {
        let bounds = QueryBounds {
            overall: bounds.overall.max(1),
            per_caller: bounds.per_caller.max(1),
            wait: bounds.wait,
        };
        QueryLimit {
            bounds,
            overall: Arc::new(Semaphore::new(bounds.overall)),
            callers: Arc::default(),
        }
    }

    pub fn bounds(&self) -> QueryBounds {
        self.bounds
    }

    /// Users with a request served or waiting (for tests: the map does not grow).
    pub fn callers(&self) -> usize {
        self.callers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A place for one request of `user`: at once when both bounds allow, else after waiting
    /// at most the bounds' `wait`.
    pub async fn enter(&self, user: &str) -> Result<Place, Busy> {
        let deadline = Instant::now() + self.bounds.wait;
        let busy = Busy {
            retry_after: self.bounds.wait.max(Duration::from_secs(1)),
        };
        let mine = {
            let mut map = self.callers.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(user.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.bounds.per_caller)))
                .clone()
        };
        // the caller's own place first: one caller's queue never holds overall places
        let caller = tokio::time::timeout_at(deadline, mine.acquire_owned()).await;
        let caller = match caller {
            Ok(Ok(p)) => p,
            _ => {
                forget_idle(&self.callers, user);
                return Err(busy);
            }
        };
        let overall = tokio::time::timeout_at(deadline, self.overall.clone().acquire_owned()).await;
        match overall {
            Ok(Ok(overall)) => Ok(Place {
                _overall: overall,
                caller: Some(caller),
                user: user.to_string(),
                callers: self.callers.clone(),
            }),
            _ => {
                drop(caller);
                forget_idle(&self.callers, user);
                Err(busy)
            }
        }
    }
}

tokio::task_local! {
    /// The place of the request being served (none until its caller is known).
    static SLOT: RefCell<Option<Place>>;
}

/// Middleware: opens the request's slot; its place, if one was taken, is released when the
/// handler has answered.
pub async fn scope(req: Request, next: Next) -> Response {
    SLOT.scope(RefCell::new(None), next.run(req)).await
}

/// Whether the request being served already holds a place (a handler may name its caller
/// twice). Outside [`scope`] (not through the router): `true`, nothing to bound.
pub fn holds_place() -> bool {
    SLOT.try_with(|slot| slot.borrow().is_some())
        .unwrap_or(true)
}

/// Keeps `place` for the rest of the request being served (dropped at once outside
/// [`scope`]).
pub fn keep(place: Place) {
    // outside a scope the place is simply dropped here
    let _ = SLOT.try_with(move |slot| *slot.borrow_mut() = Some(place));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(overall: usize, per_caller: usize) -> QueryBounds {
        QueryBounds {
            overall,
            per_caller,
            wait: Duration::from_millis(50),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_caller_over_its_bound_waits_then_is_refused() {
        let limit = QueryLimit::new(bounds(10, 2));
        let a = limit.enter("alice").await.expect("first");
        let _b = limit.enter("alice").await.expect("second");
        let busy = limit
            .enter("alice")
            .await
            .expect_err("third over the bound");
        assert_eq!(busy.retry_after, Duration::from_secs(1));
        // another caller is not held up by alice
        let _c = limit.enter("bob").await.expect("bob has his own bound");
        drop(a);
        let _d = limit.enter("alice").await.expect("a place freed");
    }

    #[tokio::test(start_paused = true)]
    async fn the_overall_bound_holds_across_callers() {
        let limit = QueryLimit::new(bounds(2, 2));
        let _a = limit.enter("alice").await.expect("a");
        let b = limit.enter("bob").await.expect("b");
        assert!(
            limit.enter("carol").await.is_err(),
            "over the overall bound"
        );
        // a waiter is let in when a place frees within the wait
        let waiting = limit.enter("carol");
        let freeing = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(b);
        };
        let (entered, ()) = tokio::join!(waiting, freeing);
        assert!(entered.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_callers_are_forgotten() {
        let limit = QueryLimit::new(bounds(1, 1));
        let a = limit.enter("alice").await.expect("a");
        assert!(limit.enter("bob").await.is_err());
        assert_eq!(limit.callers(), 1, "a refused caller leaves nothing behind");
        drop(a);
        assert_eq!(limit.callers(), 0);
    }
}
