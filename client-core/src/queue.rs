//! The offline queue: what the application sends while the connection is not `ready`, bounded by count and
//! bytes. Overflow is refused, never dropped silently.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::config::QueueLimits;

/// One encoded envelope waiting for `ready`.
#[derive(Debug)]
pub(crate) struct Queued {
    pub bytes: Vec<u8>,
    /// The request id, when the envelope is a `req` (so a timeout or cancel can take it out).
    pub request: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct OfflineQueue {
    items: VecDeque<Queued>,
    bytes: usize,
    limits: QueueLimits,
}

impl OfflineQueue {
    pub fn new(limits: QueueLimits) -> Self {
        OfflineQueue {
            items: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    /// Appends unless a bound would be exceeded.
    ///
    /// # Errors
    /// Hands the item back when the queue is full by count or bytes.
    pub fn push(&mut self, item: Queued) -> Result<(), Queued> {
        let fits = self.items.len() < self.limits.max_messages
            && self.bytes.saturating_add(item.bytes.len()) <= self.limits.max_bytes;
        if !fits {
            return Err(item);
        }
        self.bytes += item.bytes.len();
        self.items.push_back(item);
        Ok(())
    }

    pub fn pop(&mut self) -> Option<Queued> {
        let item = self.items.pop_front()?;
        self.bytes -= item.bytes.len();
        Some(item)
    }

    /// Takes a queued request out (timeout or cancel before it was sent).
    pub fn remove_request(&mut self, id: u64) -> bool {
        // `retain`, not `position` + `VecDeque::remove`: the latter brings `wrap_copy`, 0.2 KB of the browser
        // package (bench/SIZE.md). Request ids are unique, so at most one item goes.
        let mut freed = None;
        self.items.retain(|q| {
            let keep = q.request != Some(id);
            if !keep {
                freed = Some(q.bytes.len());
            }
            keep
        });
        if let Some(n) = freed {
            self.bytes -= n;
        }
        freed.is_some()
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> Queued {
        Queued {
            bytes: vec![0; n],
            request: None,
        }
    }

    #[test]
    fn refuses_beyond_the_message_bound() {
        let mut q = OfflineQueue::new(QueueLimits {
            max_messages: 2,
            max_bytes: 100,
        });
        assert!(q.push(item(1)).is_ok());
        assert!(q.push(item(1)).is_ok());
        assert!(q.push(item(1)).is_err());
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn refuses_beyond_the_byte_bound_and_keeps_count_of_bytes() {
        let mut q = OfflineQueue::new(QueueLimits {
            max_messages: 10,
            max_bytes: 10,
        });
        assert!(q.push(item(6)).is_ok());
        assert!(q.push(item(5)).is_err());
        assert!(q.push(item(4)).is_ok());
        assert_eq!(q.bytes(), 10);
        q.pop();
        assert_eq!(q.bytes(), 4);
    }

    #[test]
    fn removes_a_queued_request_by_id() {
        let mut q = OfflineQueue::new(QueueLimits::default());
        q.push(Queued {
            bytes: vec![1],
            request: Some(7),
        })
        .unwrap();
        q.push(item(2)).unwrap();
        assert!(q.remove_request(7));
        assert!(!q.remove_request(7));
        assert_eq!((q.len(), q.bytes()), (1, 2));
    }
}
