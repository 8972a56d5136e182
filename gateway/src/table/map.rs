//! The maps a table is made of, and what they cost to change.
//!
//! # Storage
//!
//! Each of the table's maps (hosts, labels, slugs, and routes by id) is a
//! [`RouteMap`]: [`SHARDS`] shards, each an `Arc<HashMap>`. A new version
//! shares every map with the previous one and copies, on write, the shard
//! pointers of a map it changes and the shards that a change touches. One
//! change to a table of `n` routes therefore costs `O(SHARDS + n / SHARDS)`
//! pointer copies, not a rebuild of `n` routes ([`RouteHandle::apply`], and
//! in batches [`crate::RoutePublisher`]). A lookup still hashes the name once
//! and finds it behind one extra pointer; short names are stored in the
//! entries themselves, so comparing them reads no other memory.
//!
//! [`RouteHandle::apply`]: super::RouteHandle::apply

use std::collections::hash_map::{self, RandomState};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::iter::FusedIterator;
use std::sync::Arc;

use super::Route;

/// log2 of [`SHARDS`].
const SHARD_BITS: u32 = 10;

/// Shards per map of a [`RouteTable`](super::RouteTable). A table version
/// copies this many pointers for each map it changes, and each change copies
/// the shards it touches, about `routes / SHARDS` entries each: 1024 keeps a
/// version of a few changes to 100k routes at tens of microseconds (see
/// `bench table-updates`).
pub const SHARDS: usize = 1 << SHARD_BITS;

/// One shard: the full 64-bit hash of a name to that name and its route.
type Shard = Arc<HashMap<u64, (Name, Arc<Route>), BuildHasherDefault<HashIsKey>>>;

/// A name in a shard entry. Most names (labels, session ids, slugs) fit in
/// the entry itself, so comparing one during a lookup reads no other memory
/// and copying a shard touches no reference count for it.
#[derive(Clone)]
enum Name {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Shared(Arc<str>),
}

/// The longest name kept inline: the entry's name then takes no more room
/// than an `Arc<str>` and a tag.
const INLINE_NAME: usize = 22;

impl Name {
    fn new(name: Arc<str>) -> Name {
        let b = name.as_bytes();
        if b.len() > INLINE_NAME {
            return Name::Shared(name);
        }
        let mut bytes = [0u8; INLINE_NAME];
        bytes[..b.len()].copy_from_slice(b);
        Name::Inline {
            len: b.len() as u8,
            bytes,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Name::Shared(name) => name.as_bytes(),
        }
    }

    fn is(&self, key: &str) -> bool {
        self.as_bytes() == key.as_bytes()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

/// A map from a name (host, label, slug or id) to a route, split into
/// [`SHARDS`] copy-on-write shards so that a new table version shares every
/// shard it does not change with the previous one.
///
/// A lookup hashes the name once (SipHash with random keys, as `HashMap`
/// does): bits 32.. of the hash pick the shard, and the shard is keyed by the
/// whole hash, so it does not hash again. The cost over one `HashMap` lookup
/// is the pointer to the shard. Two names with the same 64-bit hash cannot
/// both sit in a shard; the second goes to `overflow`, which random keys keep
/// empty in practice but which makes a collision cost a lookup, never a route.
#[derive(Clone)]
pub(crate) struct RouteMap<S = RandomState> {
    hasher: S,
    len: usize,
    /// Shared too, so that a version that does not change this map does not
    /// copy even the shard pointers.
    shards: Arc<[Shard]>,
    /// Names whose hash is taken in its shard by another name. Invariant: the
    /// hash of every name here is in its shard.
    overflow: Arc<HashMap<Arc<str>, Arc<Route>>>,
}

impl<S: Default> Default for RouteMap<S> {
    fn default() -> Self {
        // Every slot starts as the same empty map; the first write to a slot
        // gives it its own.
        let empty: Shard = Arc::default();
        RouteMap {
            hasher: S::default(),
            len: 0,
            shards: vec![empty; SHARDS].into(),
            overflow: Arc::default(),
        }
    }
}

impl<S: BuildHasher> RouteMap<S> {
    pub(crate) fn get(&self, key: &str) -> Option<&Arc<Route>> {
        let hash = self.hasher.hash_one(key);
        match self.shards[shard_index(hash)].get(&hash) {
            Some((name, route)) if name.is(key) => Some(route),
            Some(_) => self.overflow.get(key),
            None => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts or replaces, copying the shard first if an older table shares it.
    pub(super) fn insert(&mut self, key: Arc<str>, route: Arc<Route>) -> Option<Arc<Route>> {
        let hash = self.hasher.hash_one(&*key);
        let spine = Arc::make_mut(&mut self.shards);
        let shard = Arc::make_mut(&mut spine[shard_index(hash)]);
        let old = match shard.entry(hash) {
            hash_map::Entry::Vacant(slot) => {
                slot.insert((Name::new(key), route));
                None
            }
            hash_map::Entry::Occupied(mut slot) if slot.get().0.is(&key) => {
                Some(std::mem::replace(&mut slot.get_mut().1, route))
            }
            hash_map::Entry::Occupied(_) => Arc::make_mut(&mut self.overflow).insert(key, route),
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Arc<Route>> {
        let hash = self.hasher.hash_one(key);
        let i = shard_index(hash);
        // Copy a shard only when there is something to remove from it.
        match self.shards[i].get(&hash) {
            None => return None,
            Some((name, _)) if !name.is(key) => {
                if !self.overflow.contains_key(key) {
                    return None;
                }
                self.len -= 1;
                return Arc::make_mut(&mut self.overflow).remove(key);
            }
            Some(_) => {}
        }
        let spine = Arc::make_mut(&mut self.shards);
        let shard = Arc::make_mut(&mut spine[i]);
        let (_, old) = shard.remove(&hash)?;
        self.len -= 1;
        // Keep the invariant: a name with this hash waiting in the overflow
        // takes the freed place.
        let waiting = self
            .overflow
            .keys()
            .find(|name| self.hasher.hash_one(&***name) == hash)
            .cloned();
        if let Some(name) = waiting {
            if let Some(route) = Arc::make_mut(&mut self.overflow).remove(&name) {
                shard.insert(hash, (Name::new(name), route));
            }
        }
        Some(old)
    }

    fn values(&self) -> RouteIter<'_> {
        RouteIter {
            shards: self.shards.iter(),
            current: None,
            overflow: self.overflow.values(),
            remaining: self.len,
        }
    }
}

impl RouteMap {
    /// Every route in the map, for [`RouteTable::routes`](super::RouteTable::routes).
    pub(super) fn routes(&self) -> Routes<'_> {
        Routes { map: self }
    }
}

/// Which shard holds a name with this hash. Not the low bits (the shard's own
/// table places entries by them) nor the top 7 (its probe filter uses them).
fn shard_index(hash: u64) -> usize {
    (hash >> 32) as usize & (SHARDS - 1)
}

/// The hasher of the shards, whose keys are already hashes.
#[derive(Clone, Copy, Default)]
struct HashIsKey(u64);

impl Hasher for HashIsKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; this keeps any other input well defined.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
}

impl<S> fmt::Debug for RouteMap<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.shards
                    .iter()
                    .flat_map(|s| s.values())
                    .map(|(name, route)| (name.clone(), &route.id))
                    .chain(
                        self.overflow
                            .iter()
                            .map(|(name, route)| (Name::Shared(Arc::clone(name)), &route.id)),
                    ),
            )
            .finish()
    }
}

/// Every route of a table, from
/// [`RouteTable::routes`](super::RouteTable::routes), in no particular order.
#[derive(Clone, Copy, Debug)]
pub struct Routes<'t> {
    map: &'t RouteMap,
}

impl<'t> Routes<'t> {
    pub fn iter(&self) -> RouteIter<'t> {
        self.map.values()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl<'t> IntoIterator for Routes<'t> {
    type Item = &'t Arc<Route>;
    type IntoIter = RouteIter<'t>;

    fn into_iter(self) -> RouteIter<'t> {
        self.iter()
    }
}

impl<'t> IntoIterator for &Routes<'t> {
    type Item = &'t Arc<Route>;
    type IntoIter = RouteIter<'t>;

    fn into_iter(self) -> RouteIter<'t> {
        self.iter()
    }
}

/// Iterator over a table's routes (see [`Routes`]).
#[derive(Debug)]
pub struct RouteIter<'t> {
    shards: std::slice::Iter<'t, Shard>,
    current: Option<hash_map::Values<'t, u64, (Name, Arc<Route>)>>,
    overflow: hash_map::Values<'t, Arc<str>, Arc<Route>>,
    /// Routes not yet returned, for an exact `size_hint`.
    remaining: usize,
}

impl<'t> Iterator for RouteIter<'t> {
    type Item = &'t Arc<Route>;

    fn next(&mut self) -> Option<&'t Arc<Route>> {
        loop {
            if let Some((_, route)) = self.current.as_mut().and_then(|c| c.next()) {
                self.remaining -= 1;
                return Some(route);
            }
            if self.remaining == 0 {
                return None;
            }
            match self.shards.next() {
                Some(shard) => self.current = Some(shard.values()),
                None => {
                    let route = self.overflow.next()?;
                    self.remaining -= 1;
                    return Some(route);
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for RouteIter<'_> {}

impl FusedIterator for RouteIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{test_spec as spec, RouteSpec, RouteTable, TableSettings};

    #[test]
    fn routes_iterates_every_route_once() {
        let specs: Vec<RouteSpec> = (0..3000).map(|i| spec(&format!("r{i}"))).collect();
        let t = RouteTable::build(&TableSettings::default(), specs, None, 1).unwrap();
        assert_eq!(t.len(), 3000);
        let routes = t.routes();
        assert_eq!((routes.len(), routes.iter().len()), (3000, 3000));
        let mut ids: Vec<&str> = routes.iter().map(|r| &*r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3000);
        assert!(ids.iter().all(|id| t.route(id).is_some()));
        assert_eq!(RouteTable::default().routes().iter().count(), 0);
    }

    #[test]
    fn shards_stay_balanced_for_similar_names() {
        // Session names differ in a few characters; the shard hash must still
        // spread them, or updates would copy oversized shards.
        let mut map = RouteMap::<RandomState>::default();
        let route = RouteTable::build(&TableSettings::default(), vec![spec("x")], None, 1)
            .unwrap()
            .route("x")
            .cloned()
            .unwrap();
        let n = 100 * SHARDS;
        for i in 0..n {
            map.insert(
                format!("user{}-lab-{i:06}", i % 37).into(),
                Arc::clone(&route),
            );
        }
        let largest = map.shards.iter().map(|s| s.len()).max().unwrap();
        assert!(largest < 200, "largest shard {largest}, mean 100");
        assert_eq!(map.len(), n);
    }

    /// Hashes a name to its length: names of one length collide.
    #[derive(Default)]
    struct LengthHasher(u64);

    impl Hasher for LengthHasher {
        fn finish(&self) -> u64 {
            self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        }

        fn write(&mut self, bytes: &[u8]) {
            self.0 += bytes.len() as u64;
        }
    }

    #[test]
    fn names_with_one_hash_all_keep_their_routes() {
        let table = RouteTable::build(
            &TableSettings::default(),
            vec![spec("r1"), spec("r2"), spec("r3"), spec("r4")],
            None,
            1,
        )
        .unwrap();
        let r = |id: &str| Arc::clone(table.route(id).unwrap());
        let mut map = RouteMap::<BuildHasherDefault<LengthHasher>>::default();
        for (name, id) in [("aa", "r1"), ("bb", "r2"), ("cc", "r3"), ("ddd", "r4")] {
            assert!(map.insert(name.into(), r(id)).is_none());
        }
        assert_eq!(map.len(), 4);
        assert_eq!(map.overflow.len(), 2, "two of the three two-letter names");
        let before = map.clone();
        assert_eq!(&*map.insert("bb".into(), r("r4")).unwrap().id, "r2");
        assert_eq!(map.len(), 4);
        let ids = |m: &RouteMap<_>| {
            ["aa", "bb", "cc", "ddd", "ee"].map(|n| m.get(n).map(|r| r.id.to_string()))
        };
        assert_eq!(
            ids(&map),
            [Some("r1"), Some("r4"), Some("r3"), Some("r4"), None].map(|s| s.map(String::from))
        );
        // Whichever of them holds the shard's place, removing it lets the
        // others be found.
        for name in ["aa", "bb", "cc"] {
            assert!(map.remove(name).is_some(), "{name}");
            assert!(map.get(name).is_none(), "{name}");
            assert!(map.remove(name).is_none(), "{name}");
        }
        assert_eq!(map.len(), 1);
        assert!(map.overflow.is_empty());
        assert_eq!(&*map.get("ddd").unwrap().id, "r4");
        assert_eq!(map.values().len(), 1);
        // The copy taken before is as it was.
        assert_eq!(
            ids(&before),
            [Some("r1"), Some("r2"), Some("r3"), Some("r4"), None].map(|s| s.map(String::from))
        );
        let mut all: Vec<String> = before.values().map(|r| r.id.to_string()).collect();
        all.sort();
        assert_eq!(all, ["r1", "r2", "r3", "r4"]);
    }
}
