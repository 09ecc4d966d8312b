//! One copy of values that many devices hold alike (label maps, capability sets, reasons,
//! digests): a fleet of 100,000 devices has a few hundred distinct ones.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

/// Hands out the kept copy of each value. Values no holder keeps any more are swept out once
/// the pool has doubled since the last sweep, so a long-lived pool stays bounded by what is
/// held, whatever devices send.
#[derive(Debug)]
pub struct Pool<T: ?Sized> {
    kept: HashSet<Arc<T>>,
    sweep_at: usize,
}

impl<T: ?Sized> Default for Pool<T> {
    fn default() -> Self {
        Self {
            kept: HashSet::new(),
            sweep_at: 1024,
        }
    }
}

impl<T: ?Sized + Eq + Hash> Pool<T> {
    /// The kept copy equal to `value`, which becomes the kept copy if there is none.
    pub fn share(&mut self, value: Arc<T>) -> Arc<T> {
        match self.kept.get(&*value) {
            Some(kept) => kept.clone(),
            None => self.keep(value),
        }
    }

    /// [`Pool::share`] for a borrowed value, copied only when not kept yet.
    pub fn share_ref(&mut self, value: &T) -> Arc<T>
    where
        for<'v> Arc<T>: From<&'v T>,
    {
        match self.kept.get(value) {
            Some(kept) => kept.clone(),
            None => self.keep(Arc::from(value)),
        }
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    fn keep(&mut self, value: Arc<T>) -> Arc<T> {
        if self.kept.len() >= self.sweep_at {
            // only the pool holds these
            self.kept.retain(|kept| Arc::strong_count(kept) > 1);
            self.sweep_at = (self.kept.len() * 2).max(1024);
        }
        self.kept.insert(value.clone());
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_get_one_copy() {
        let mut pool: Pool<str> = Pool::default();
        let a = pool.share_ref("int8 fits");
        let b = pool.share(Arc::from("int8 fits"));
        let c = pool.share_ref("fp16 fits");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn values_nobody_holds_are_swept_once_the_pool_doubles() {
        let mut pool: Pool<str> = Pool::default();
        let mut held = Vec::new();
        for i in 0..3000 {
            let value = pool.share_ref(&format!("serial {i}"));
            // only every tenth holder keeps its value
            if i % 10 == 0 {
                held.push(value);
            }
        }
        assert!(pool.len() < 1024 + 300, "{}", pool.len());
        assert!(Arc::ptr_eq(&pool.share_ref("serial 0"), &held[0]));
    }
}
