//! Typed indices and the arena containers they index.
//!
//! Every IR entity (op, value, interned string, type and attribute set) is a `u32` newtype,
//! defined here ([`OpId`], [`ValueId`], [`Sym`], [`TypeId`], [`AttrsId`]). An
//! [`Arena`] owns the entities of one kind and hands out ids; a [`SideTable`] attaches extra data
//! to ids it did not allocate. Ids are never reused, so a stale id is detectable rather than
//! silently aliasing a new entity.

use std::fmt;
use std::marker::PhantomData;

use hashbrown::HashTable;

/// A typed index into an [`Arena`].
pub trait EntityId: Copy + Eq + std::hash::Hash + Ord + fmt::Debug {
    fn from_index(index: usize) -> Self;
    fn index(self) -> usize;
}

/// Defines a `u32` id newtype implementing [`EntityId`].
///
/// The id stores `index + 1` in a `NonZeroU32`, so `Option<Id>` (and enums such as
/// [`User`](crate::ir::graph::User) that wrap an id) take no more room than the id itself.
macro_rules! entity_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(std::num::NonZeroU32);

        impl $crate::ir::entity::EntityId for $name {
            #[inline]
            fn from_index(index: usize) -> Self {
                // Arenas hold far fewer than 2^32 entities: the text that describes them would
                // be hundreds of gigabytes.
                let bits = u32::try_from(index).ok().and_then(|i| i.checked_add(1)).unwrap_or(u32::MAX);
                $name(std::num::NonZeroU32::new(bits).unwrap_or(std::num::NonZeroU32::MAX))
            }
            #[inline]
            fn index(self) -> usize {
                (self.0.get() - 1) as usize
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!($prefix, "{}"), $crate::ir::entity::EntityId::index(*self))
            }
        }
    };
}

// The ids of the IR's entities (re-exported by `ir::graph`, whose arenas they index).
entity_id!(
    /// An op in a [`Graph`](super::graph::Graph).
    OpId,
    "op"
);
entity_id!(
    /// An SSA value in a [`Graph`](super::graph::Graph).
    ValueId,
    "v"
);
entity_id!(
    /// An interned string (value names, locations).
    Sym,
    "sym"
);
entity_id!(
    /// An interned [`TensorType`](super::types::TensorType).
    TypeId,
    "ty"
);
entity_id!(
    /// An interned attribute set.
    AttrsId,
    "attrs"
);

/// Owns the entities of one kind; ids are handed out by [`Arena::push`] and never reused.
#[derive(Clone)]
pub struct Arena<I: EntityId, T> {
    items: Vec<T>,
    _id: PhantomData<I>,
}

impl<I: EntityId, T> Default for Arena<I, T> {
    fn default() -> Self {
        Arena { items: Vec::new(), _id: PhantomData }
    }
}

impl<I: EntityId, T> Arena<I, T> {
    pub fn with_capacity(capacity: usize) -> Self {
        Arena { items: Vec::with_capacity(capacity), _id: PhantomData }
    }

    /// Makes room for `additional` more entities.
    pub fn reserve(&mut self, additional: usize) {
        self.items.reserve_exact(additional);
    }

    pub fn push(&mut self, item: T) -> I {
        if self.items.len() == self.items.capacity() {
            // Grow by half rather than doubling: the arenas of a big graph hold tens of
            // megabytes, and doubling would leave up to half of that unused.
            self.items.reserve_exact((self.items.len() / 2).max(16));
        }
        let id = I::from_index(self.items.len());
        // Filling a big arena writes fresh memory; asking for the line some items ahead
        // overlaps its cache miss with the work between pushes.
        let ahead = AHEAD_BYTES / std::mem::size_of::<T>().max(1);
        prefetch_write(self.items.as_ptr().wrapping_add(self.items.len() + ahead));
        self.items.push(item);
        id
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn get(&self, id: I) -> Option<&T> {
        self.items.get(id.index())
    }

    pub fn iter(&self) -> impl Iterator<Item = (I, &T)> + '_ {
        self.items.iter().enumerate().map(|(i, item)| (I::from_index(i), item))
    }
}

impl<I: EntityId, T> std::ops::Index<I> for Arena<I, T> {
    type Output = T;
    #[inline]
    fn index(&self, id: I) -> &T {
        &self.items[id.index()]
    }
}

impl<I: EntityId, T> std::ops::IndexMut<I> for Arena<I, T> {
    #[inline]
    fn index_mut(&mut self, id: I) -> &mut T {
        &mut self.items[id.index()]
    }
}

/// Per-entity data for ids allocated elsewhere; grows on write, reads a default when unset.
#[derive(Clone)]
pub struct SideTable<I: EntityId, T: Clone + Default> {
    items: Vec<T>,
    default: T,
    _id: PhantomData<I>,
}

impl<I: EntityId, T: Clone + Default> Default for SideTable<I, T> {
    fn default() -> Self {
        SideTable { items: Vec::new(), default: T::default(), _id: PhantomData }
    }
}

impl<I: EntityId, T: Clone + Default> SideTable<I, T> {
    pub fn with_capacity(capacity: usize) -> Self {
        SideTable { items: Vec::with_capacity(capacity), default: T::default(), _id: PhantomData }
    }

    #[inline]
    pub fn get(&self, id: I) -> &T {
        self.items.get(id.index()).unwrap_or(&self.default)
    }

    #[inline]
    pub fn set(&mut self, id: I, value: T) {
        let index = id.index();
        if index >= self.items.len() {
            self.items.resize(index + 1, T::default());
        }
        self.items[index] = value;
    }
}

/// Interns values of type `T`: equal values get the same id. Each value is stored once, with
/// its hash (a table resize then never rehashes the values, some of which are large: attribute
/// sets with calibration histograms); the lookup table holds only ids.
#[derive(Clone)]
pub struct Interner<I: EntityId, T: Eq + std::hash::Hash> {
    items: Vec<T>,
    hashes: Vec<u64>,
    table: HashTable<I>,
}

impl<I: EntityId, T: Eq + std::hash::Hash> Default for Interner<I, T> {
    fn default() -> Self {
        Interner { items: Vec::new(), hashes: Vec::new(), table: HashTable::new() }
    }
}

impl<I: EntityId, T: Eq + std::hash::Hash> Interner<I, T> {
    pub fn intern(&mut self, value: T) -> I {
        let hash = fx_hash(&value);
        let items = &self.items;
        if let Some(&id) = self.table.find(hash, |&id| items[id.index()] == value) {
            return id;
        }
        let id = I::from_index(self.items.len());
        self.items.push(value);
        self.hashes.push(hash);
        let hashes = &self.hashes;
        self.table.insert_unique(hash, id, |&id| hashes[id.index()]);
        id
    }

    pub fn lookup(&self, value: &T) -> Option<I> {
        self.table.find(fx_hash(value), |&id| self.items[id.index()] == *value).copied()
    }
}

impl<I: EntityId, T: Eq + std::hash::Hash> std::ops::Index<I> for Interner<I, T> {
    type Output = T;
    #[inline]
    fn index(&self, id: I) -> &T {
        &self.items[id.index()]
    }
}

/// A hash index of entity ids whose keys live elsewhere: the caller hashes a key and compares
/// it against an id, the index only stores ids under their hashes. It is an open-addressing
/// table in the SwissTable style (a tag per bucket, probed several at a time) with linear
/// probing, so the first buckets a lookup reads are known from the hash alone: a builder that
/// knows a key ahead of time (the parser, before it lowers a statement) can
/// [`prefetch`](HashIndex::prefetch) them, and a big table costs it no cache miss per lookup.
///
/// Tags hold 15 bits of the hash, so that a lookup almost never compares its key with an entry
/// that only shares the tag: in a big table that entry is old, and reading its key would miss
/// the cache two or three times over.
#[derive(Clone)]
pub struct HashIndex<I: EntityId> {
    /// One tag per bucket ([`EMPTY`], [`DELETED`] or 15 bits of the hash, with the high bit
    /// set), then a copy of the first [`GROUP`] tags, so that a group read never wraps around.
    tags: Vec<u16>,
    /// The id in each full bucket, as `index + 1`.
    ids: Vec<u32>,
    /// Live entries.
    items: usize,
    /// Buckets that are not empty: live entries and tombstones.
    used: usize,
    _id: PhantomData<I>,
}

impl<I: EntityId> Default for HashIndex<I> {
    fn default() -> Self {
        HashIndex { tags: Vec::new(), ids: Vec::new(), items: 0, used: 0, _id: PhantomData }
    }
}

const EMPTY: u16 = 0;
const DELETED: u16 = 1;
/// Tags read at once (one `u64`).
const GROUP: usize = 4;
const LO: u64 = 0x0001_0001_0001_0001;
const HI: u64 = 0x8000_8000_8000_8000;

/// The tag stored for `hash`: its top 15 bits, with the high bit set so that it is never
/// [`EMPTY`] or [`DELETED`]. (The bucket comes from the low bits.)
#[inline]
fn tag(hash: u64) -> u16 {
    (hash >> 49) as u16 | 0x8000
}

/// The tags of `group` equal to zero, as a mask of their high bits. Exact for the lowest one;
/// a tag above a zero tag may be reported too (callers re-check what they find).
#[inline]
fn zero_tags(group: u64) -> u64 {
    group.wrapping_sub(LO) & !group & HI
}

/// Bucket count for `items` entries: a power of two at most 7/8 full.
fn buckets_for(items: usize) -> usize {
    if items == 0 {
        0
    } else {
        items.saturating_mul(8).div_ceil(7).next_power_of_two().max(GROUP)
    }
}

impl<I: EntityId> HashIndex<I> {
    #[inline]
    fn mask(&self) -> usize {
        self.ids.len().wrapping_sub(1)
    }

    #[inline]
    fn group(&self, pos: usize) -> u64 {
        match self.tags[pos..pos + GROUP] {
            [a, b, c, d] => u64::from(a) | u64::from(b) << 16 | u64::from(c) << 32 | u64::from(d) << 48,
            _ => 0,
        }
    }

    /// The bucket of the lowest tag flagged in `mask` in the group at `pos`.
    #[inline]
    fn bucket(&self, pos: usize, mask: u64) -> usize {
        (pos + (mask.trailing_zeros() / 16) as usize) & self.mask()
    }

    /// Entries that fit before the table must grow.
    pub fn capacity(&self) -> usize {
        self.ids.len() / 8 * 7
    }

    pub fn len(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Asks the processor to load the buckets a lookup of `hash` reads first. Only a hint: it
    /// changes no result.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if self.ids.is_empty() {
            return;
        }
        let pos = hash as usize & self.mask();
        prefetch(self.tags.as_ptr().wrapping_add(pos));
        prefetch(self.ids.as_ptr().wrapping_add(pos));
    }

    /// The id stored under `hash` for which `eq` holds.
    #[inline]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(I) -> bool) -> Option<I> {
        if self.ids.is_empty() {
            return None;
        }
        let wanted = tag(hash);
        let mut pos = hash as usize & self.mask();
        // At most 7/8 of the buckets are used, so some group has an empty one.
        loop {
            let group = self.group(pos);
            let mut matches = zero_tags(group ^ (u64::from(wanted) * LO));
            while matches != 0 {
                let i = self.bucket(pos, matches);
                if self.tags[i] == wanted {
                    let id = I::from_index(self.ids[i] as usize - 1);
                    if eq(id) {
                        return Some(id);
                    }
                }
                matches &= matches - 1;
            }
            if zero_tags(group) != 0 {
                return None;
            }
            pos = (pos + GROUP) & self.mask();
        }
    }

    /// The first bucket from `hash`'s home that holds no live entry.
    #[inline]
    fn free_slot(&self, hash: u64) -> usize {
        let mut pos = hash as usize & self.mask();
        loop {
            // Empty and deleted tags are the ones below 2.
            let free = zero_tags(self.group(pos) & !LO);
            if free != 0 {
                return self.bucket(pos, free);
            }
            pos = (pos + GROUP) & self.mask();
        }
    }

    #[inline]
    fn set_tag(&mut self, i: usize, t: u16) {
        self.tags[i] = t;
        if i < GROUP {
            let buckets = self.ids.len();
            self.tags[buckets + i] = t;
        }
    }

    /// Adds `id` under `hash`; the caller knows that no equal key is stored. `hash_of` gives the
    /// hash of a stored id, for when the table grows.
    #[inline]
    pub fn insert_unique(&mut self, hash: u64, id: I, hash_of: impl Fn(I) -> u64) {
        if self.used >= self.capacity() {
            self.grow(1, hash_of);
        }
        let i = self.free_slot(hash);
        if self.tags[i] == EMPTY {
            self.used += 1;
        }
        self.set_tag(i, tag(hash));
        self.ids[i] = id.index() as u32 + 1;
        self.items += 1;
    }

    /// Removes `id`, stored under `hash`; `false` if it is not there.
    pub fn remove(&mut self, hash: u64, id: I) -> bool {
        if self.ids.is_empty() {
            return false;
        }
        let mask = self.mask();
        let want = id.index() as u32 + 1;
        let mut i = hash as usize & mask;
        loop {
            match self.tags[i] {
                EMPTY => return false,
                t if t == tag(hash) && self.ids[i] == want => break,
                _ => i = (i + 1) & mask,
            }
        }
        // No probe needs to pass this bucket if the next one is empty.
        if self.tags[(i + 1) & mask] == EMPTY {
            self.set_tag(i, EMPTY);
            self.used -= 1;
        } else {
            self.set_tag(i, DELETED);
        }
        self.items -= 1;
        true
    }

    /// Makes room for `additional` more entries without growing.
    pub fn reserve(&mut self, additional: usize, hash_of: impl Fn(I) -> u64) {
        if self.used + additional > self.capacity() {
            self.grow(additional, hash_of);
        }
    }

    /// Rebuilds the table with room for `additional` more live entries (tombstones dropped).
    #[cold]
    fn grow(&mut self, additional: usize, hash_of: impl Fn(I) -> u64) {
        let needed = self.items + additional;
        // Grow by at least half, so that inserting one by one stays amortized linear.
        let buckets = buckets_for(needed.max(self.items + self.items / 2));
        let old_tags = std::mem::take(&mut self.tags);
        let old_ids = std::mem::take(&mut self.ids);
        self.tags = vec![EMPTY; buckets + GROUP];
        self.ids = vec![0; buckets];
        self.used = 0;
        self.items = 0;
        for (&t, &raw) in old_tags.iter().zip(&old_ids) {
            if t > DELETED {
                let hash = hash_of(I::from_index(raw as usize - 1));
                let i = self.free_slot(hash);
                self.set_tag(i, tag(hash));
                self.ids[i] = raw;
                self.used += 1;
                self.items += 1;
            }
        }
    }
}

/// A hint to load the cache line holding `p`; never faults, whatever `p` is.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch<T>(p: *const T) {
    // SAFETY: a prefetch is only a hint: it reads nothing architecturally and cannot fault,
    // even for an address outside any allocation.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast()) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn prefetch<T>(_: *const T) {}

/// How far ahead of the end a growing buffer asks for memory (see [`prefetch_write`]).
pub(crate) const AHEAD_BYTES: usize = 512;

/// A hint that the cache line holding `p` will be written soon; never faults, whatever `p` is.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_write<T>(p: *const T) {
    // SAFETY: as for `prefetch`.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(p.cast()) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(crate) fn prefetch_write<T>(_: *const T) {}

/// The hash every interning table uses.
#[inline]
pub(crate) fn fx_hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    entity_id!(Id, "id");

    /// Keys whose hashes collide in the bucket bits and in the tag, so that probing, tombstones
    /// and growth are exercised.
    fn hash(key: usize) -> u64 {
        if key % 3 == 0 {
            0x5555
        } else {
            fx_hash(&key)
        }
    }

    #[test]
    fn hash_index_finds_inserts_and_removes() {
        let mut index: HashIndex<Id> = HashIndex::default();
        let keys = |id: Id| id.index();
        assert_eq!(index.find(hash(1), |id| keys(id) == 1), None);
        for key in 0..1000 {
            index.insert_unique(hash(key), Id::from_index(key), |id| hash(keys(id)));
        }
        assert_eq!(index.len(), 1000);
        for key in 0..1000 {
            assert_eq!(index.find(hash(key), |id| keys(id) == key), Some(Id::from_index(key)));
        }
        assert_eq!(index.find(hash(1000), |id| keys(id) == 1000), None);
        for key in (0..1000).filter(|k| k % 2 == 0) {
            assert!(index.remove(hash(key), Id::from_index(key)));
            assert!(!index.remove(hash(key), Id::from_index(key)));
        }
        for key in 0..1000 {
            let found = index.find(hash(key), |id| keys(id) == key);
            assert_eq!(found, (key % 2 == 1).then(|| Id::from_index(key)), "key {key}");
        }
        // Reinsert over the tombstones, then grow past them.
        for key in (0..3000).filter(|k| k % 2 == 0) {
            index.insert_unique(hash(key), Id::from_index(key), |id| hash(keys(id)));
        }
        for key in 0..3000 {
            let found = index.find(hash(key), |id| keys(id) == key);
            assert_eq!(found, (key < 1000 || key % 2 == 0).then(|| Id::from_index(key)), "key {key}");
        }
    }

    #[test]
    fn hash_index_reserves_without_growing() {
        let mut index: HashIndex<Id> = HashIndex::default();
        index.reserve(1000, |_| unreachable!("nothing to rehash"));
        let capacity = index.capacity();
        assert!(capacity >= 1000);
        for key in 0..1000 {
            index.insert_unique(hash(key), Id::from_index(key), |_| unreachable!("reserved"));
        }
        assert_eq!(index.capacity(), capacity);
    }
}
