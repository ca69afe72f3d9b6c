//! The main thread's event loop (event-manager): device events, the guest's
//! reset line and the exit notifier.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitNotifier, ExitReason};

/// A subscriber as the loop holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors running the loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll failed.
    #[error("event loop failed")]
    Epoll(#[source] event_manager::Error),
    /// Duplicating an eventfd failed.
    #[error("cannot duplicate the exit eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Turns the guest's reset request into an exit reason (a panic if the
/// console saw one first), and wakes the loop on exit.
struct ExitWatcher {
    reset: EventFd,
    exit: Arc<ExitNotifier>,
    exit_evt: EventFd,
    panic: Arc<Mutex<Option<String>>>,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.reset.as_raw_fd(), self.exit_evt.as_raw_fd()] {
            if let Err(e) = ops.add(event_manager::Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch the exit events: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            let panic = self.panic.lock().unwrap_or_else(|e| e.into_inner()).clone();
            self.exit.exit(match panic {
                Some(msg) => ExitReason::GuestPanic(msg),
                None => ExitReason::GuestReset,
            });
        } else {
            let _ = self.exit_evt.read();
        }
    }
}

/// The loop.
pub struct EventLoop {
    em: EventManager<Subscriber>,
}

impl EventLoop {
    /// A loop watching the reset line and the exit notifier.
    pub fn new(
        exit: Arc<ExitNotifier>,
        reset: EventFd,
        panic: Arc<Mutex<Option<String>>>,
    ) -> Result<Self, EventLoopError> {
        let mut em: EventManager<Subscriber> =
            EventManager::new().map_err(EventLoopError::Epoll)?;
        let exit_evt = exit
            .eventfd()
            .try_clone()
            .map_err(EventLoopError::EventFd)?;
        let watcher: Subscriber = Arc::new(Mutex::new(ExitWatcher {
            reset,
            exit,
            exit_evt,
            panic,
        }));
        em.add_subscriber(watcher);
        Ok(EventLoop { em })
    }

    /// Adds a device (or other) subscriber.
    pub fn add(&mut self, s: Subscriber) {
        self.em.add_subscriber(s);
    }

    /// Runs until `exit` has a reason.
    pub fn run_until_exit(&mut self, exit: &ExitNotifier) -> Result<ExitReason, EventLoopError> {
        loop {
            if let Some(r) = exit.reason() {
                return Ok(r);
            }
            self.em
                .run_with_timeout(200)
                .map_err(EventLoopError::Epoll)?;
        }
    }
}
