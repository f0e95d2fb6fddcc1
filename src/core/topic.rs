//! Topics: names interned into dense ids, a stable wire hash per topic, and retirement of topics
//! that stayed at zero so that their ids can be reused.
//!
//! A [`Topic`] handle is an id plus the generation of that id when the handle was made. Retiring
//! a topic bumps its id's generation, so an old handle can never count into whatever topic later
//! reuses the id: it is *stale*, [`crate::Shard::try_join`] returns [`crate::Error::StaleTopic`]
//! and [`crate::Engine::count`] reads 0. Look the name up again to get a live handle.

use std::collections::VecDeque;
use std::hash::Hasher;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::core::hot::Hot;
use crate::core::sync::Ordering;
use crate::error::Error;

/// A handle to an interned topic: `Copy`, eight bytes, valid until the topic is retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Topic {
    id: u32,
    generation: u32,
}

impl Topic {
    /// The id reserved for joins that arrive while the topic table is full; counted and shown as
    /// [`OVERFLOW_NAME`], never retired.
    pub const OVERFLOW: Topic = Topic {
        id: 0,
        generation: 0,
    };

    pub(crate) fn from_parts(id: u32, generation: u32) -> Topic {
        Topic { id, generation }
    }

    /// The dense id (an index into the engine's tables; reused after retirement).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The generation of the id this handle was made for.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

/// The name under which [`Topic::OVERFLOW`] is listed.
pub const OVERFLOW_NAME: &str = "(overflow)";

/// The stable 64-bit wire hash of a topic name: SipHash-1-3 keyed with `key`. The same on every
/// node and every build, for the same key.
pub fn wire_hash(key: [u8; 16], name: &str) -> u64 {
    let mut h = siphasher::sip::SipHasher13::new_with_key(&key);
    h.write(name.as_bytes());
    h.finish()
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    id: u32,
    generation: u32,
    /// Retirement has begun; lookups take the locked path and revive it.
    dying: bool,
}

/// The name and wire hash of a live id.
#[derive(Clone, Debug)]
pub(crate) struct NameRec {
    pub(crate) name: Arc<str>,
    pub(crate) hash: u64,
}

struct Alloc {
    free: VecDeque<u32>,
    next: u32,
    /// Ids interned since the reducer last asked (they start at zero: retirement candidates).
    new: Vec<u32>,
}

pub(crate) struct Topics {
    by_name: papaya::HashMap<Arc<str>, Entry, foldhash::fast::RandomState>,
    by_id: papaya::HashMap<u32, NameRec, foldhash::fast::RandomState>,
    alloc: Mutex<Alloc>,
    capacity: usize,
    key: [u8; 16],
    /// The longest name interned (the engine passes [`crate::MAX_NAME_LEN`]).
    max_name: usize,
    /// [`Topics::resolve`] calls that fell back to [`Topic::OVERFLOW`] for an over-long name.
    pub(crate) long_names: AtomicU64,
    /// [`Topics::resolve`] calls that fell back to [`Topic::OVERFLOW`] for a full table.
    pub(crate) full: AtomicU64,
}

/// What phase two of a retirement did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Retired {
    /// The id is free for reuse.
    Freed,
    /// Someone looked the name up (or a racing join counted) meanwhile: the topic lives on.
    Revived,
    /// The topic was revived and a later retirement began: that one decides.
    Superseded,
}

impl Topics {
    pub(crate) fn new(capacity: usize, key: u128, max_name: usize) -> Topics {
        let key = key.to_le_bytes();
        let t = Topics {
            by_name: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .build(),
            by_id: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .build(),
            alloc: Mutex::new(Alloc {
                free: VecDeque::new(),
                next: 1,
                new: Vec::new(),
            }),
            capacity,
            key,
            max_name,
            long_names: AtomicU64::new(0),
            full: AtomicU64::new(0),
        };
        t.by_id.pin().insert(
            0,
            NameRec {
                name: OVERFLOW_NAME.into(),
                hash: wire_hash(key, OVERFLOW_NAME),
            },
        );
        t
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Alloc> {
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live handle for `name`, if it is interned (a lock-free read).
    #[inline]
    pub(crate) fn lookup(&self, name: &str) -> Option<Topic> {
        match self.by_name.pin().get(name) {
            Some(e) if !e.dying => Some(Topic::from_parts(e.id, e.generation)),
            _ => None,
        }
    }

    /// The handle for `name`, interning it if new; [`Topic::OVERFLOW`] when the name is over
    /// the length limit or the table is full (each counted: `long_names`, `full`).
    #[inline]
    pub(crate) fn resolve(&self, name: &str, hot: &Hot) -> Topic {
        self.lookup(name)
            .unwrap_or_else(|| self.intern(name, hot).unwrap_or_else(|e| self.overflow(&e)))
    }

    #[cold]
    fn overflow(&self, e: &Error) -> Topic {
        let c = match e {
            Error::NameTooLong { .. } => &self.long_names,
            _ => &self.full,
        };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Topic::OVERFLOW
    }

    /// The handle for `name`, interning it if new; [`Error::NameTooLong`] for a name over the
    /// limit, [`Error::TopicsFull`] when no id is free.
    pub(crate) fn intern(&self, name: &str, hot: &Hot) -> Result<Topic, Error> {
        if name.len() > self.max_name {
            return Err(Error::NameTooLong {
                len: name.len(),
                max: self.max_name,
            });
        }
        let mut a = self.lock();
        let map = self.by_name.pin();
        if let Some(e) = map.get(name) {
            if e.dying {
                let e = Entry { dying: false, ..*e };
                let key = map
                    .get_key_value(name)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| name.into());
                map.insert(key, e);
                return Ok(Topic::from_parts(e.id, e.generation));
            }
            return Ok(Topic::from_parts(e.id, e.generation));
        }
        let id = match a.free.pop_front() {
            Some(id) => id,
            None if (a.next as usize) < self.capacity => {
                a.next += 1;
                a.next - 1
            }
            None => {
                return Err(Error::TopicsFull {
                    capacity: self.capacity,
                });
            }
        };
        let generation = hot.gens[id as usize].load(Ordering::SeqCst);
        let name: Arc<str> = name.into();
        self.by_id.pin().insert(
            id,
            NameRec {
                name: name.clone(),
                hash: wire_hash(self.key, &name),
            },
        );
        map.insert(
            name,
            Entry {
                id,
                generation,
                dying: false,
            },
        );
        a.new.push(id);
        Ok(Topic::from_parts(id, generation))
    }

    /// Ids interned since the last call.
    pub(crate) fn take_new(&self, into: &mut Vec<u32>) {
        into.append(&mut self.lock().new);
    }

    /// The name and wire hash of id `id`.
    pub(crate) fn name(&self, id: u32) -> Option<NameRec> {
        self.by_id.pin().get(&id).cloned()
    }

    /// One past the highest id ever handed out.
    pub(crate) fn high_water(&self) -> u32 {
        self.lock().next
    }

    /// Live topics (interned and not freed), the overflow topic included.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Retirement, phase one: the topic stayed at zero long enough. Bumps the id's generation, so
    /// every existing handle is stale from now on, and marks the name dying (a lookup revives it).
    /// Returns the new generation, or `None` when there is nothing to retire (already dying, or
    /// the overflow topic).
    pub(crate) fn begin_retire(&self, id: u32, hot: &Hot) -> Option<u32> {
        if id == 0 {
            return None;
        }
        let _a = self.lock();
        let rec = self.name(id)?;
        let map = self.by_name.pin();
        match map.get(&*rec.name) {
            Some(e) if e.id == id && !e.dying => {
                // The owner path reads `gens` (made safe by the epoch wait before phase two); the
                // shared path checks the generation inside its own CAS.
                let g = hot.bump_generation(id);
                let e = Entry {
                    id,
                    generation: g,
                    dying: true,
                };
                map.insert(rec.name.clone(), e);
                Some(g)
            }
            _ => None,
        }
    }

    /// Retirement, phase two, once every shard that can join has moved past the epoch of phase
    /// one (`generation`: what phase one set). `zero`: the id's counts, read after that, sum to
    /// zero on every core.
    pub(crate) fn finish_retire(&self, id: u32, generation: u32, zero: bool) -> Retired {
        let mut a = self.lock();
        let Some(rec) = self.name(id) else {
            return Retired::Superseded;
        };
        let map = self.by_name.pin();
        let Some(e) = map.get(&*rec.name).copied() else {
            return Retired::Superseded;
        };
        if e.id != id || e.generation != generation {
            return Retired::Superseded;
        }
        if !e.dying {
            return Retired::Revived;
        }
        if !zero {
            map.insert(rec.name.clone(), Entry { dying: false, ..e });
            return Retired::Revived;
        }
        map.remove(&*rec.name);
        self.by_id.pin().remove(&id);
        a.free.push_back(id);
        Retired::Freed
    }
}

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn wire_hash_is_stable_and_keyed() {
        // Fixed vectors: these must never change between builds or releases.
        assert_eq!(wire_hash([0; 16], "room:42"), wire_hash([0; 16], "room:42"));
        assert_ne!(wire_hash([0; 16], "room:42"), wire_hash([1; 16], "room:42"));
        assert_ne!(wire_hash([0; 16], "room:42"), wire_hash([0; 16], "room:43"));
        let h = wire_hash(*b"0123456789abcdef", "room:42");
        let mut s = siphasher::sip::SipHasher13::new_with_keys(
            u64::from_le_bytes(*b"01234567"),
            u64::from_le_bytes(*b"89abcdef"),
        );
        s.write(b"room:42");
        assert_eq!(h, s.finish());
    }

    #[test]
    fn intern_retire_revive_and_reuse() {
        let hot = Hot::new(1, 8, 16);
        let t = Topics::new(8, 0, crate::MAX_NAME_LEN);
        let a = t.intern("a", &hot).unwrap();
        assert_eq!(a.id(), 1);
        assert_eq!(t.lookup("a"), Some(a));
        assert_eq!(t.resolve("a", &hot), a);

        // Retire with a revival in between.
        let g1 = t.begin_retire(1, &hot).unwrap();
        assert_eq!(
            t.lookup("a"),
            None,
            "a dying name is not handed out lock-free"
        );
        let revived = t.intern("a", &hot).unwrap();
        assert_eq!(revived.id(), 1);
        assert_ne!(revived.generation(), a.generation());
        assert_eq!(t.finish_retire(1, g1, true), Retired::Revived);

        // Retire for real; the id is reused with a new generation.
        let g2 = t.begin_retire(1, &hot).unwrap();
        assert_eq!(
            t.finish_retire(1, g1, true),
            Retired::Superseded,
            "an older phase one"
        );
        assert_eq!(t.finish_retire(1, g2, true), Retired::Freed);
        assert_eq!(t.lookup("a"), None);
        let b = t.intern("b", &hot).unwrap();
        assert_eq!(b.id(), 1);
        assert_ne!(b.generation(), a.generation());
        assert_ne!(b.generation(), revived.generation());
        assert_eq!(t.name(1).unwrap().name.as_ref(), "b");
    }

    #[test]
    fn a_straggler_revives() {
        let hot = Hot::new(1, 8, 16);
        let t = Topics::new(8, 0, crate::MAX_NAME_LEN);
        t.intern("x", &hot).unwrap();
        let g = t.begin_retire(1, &hot).unwrap();
        assert_eq!(t.finish_retire(1, g, false), Retired::Revived);
        assert!(t.lookup("x").is_some());
    }

    #[test]
    fn full_table_overflows() {
        let hot = Hot::new(1, 3, 16);
        let t = Topics::new(3, 0, crate::MAX_NAME_LEN);
        t.intern("a", &hot).unwrap();
        t.intern("b", &hot).unwrap();
        assert!(matches!(
            t.intern("c", &hot),
            Err(Error::TopicsFull { capacity: 3 })
        ));
        assert_eq!(t.resolve("c", &hot), Topic::OVERFLOW);
        assert!(
            t.begin_retire(0, &hot).is_none(),
            "the overflow topic never retires"
        );
    }
}
