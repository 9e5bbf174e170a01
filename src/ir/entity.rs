//! Typed indices and the arena containers they index.
//!
//! Every IR entity (op, value, interned type, interned attribute set) is a `u32` newtype. An
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
pub(crate) use entity_id;

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

/// The hash every interning table uses.
#[inline]
pub(crate) fn fx_hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(value)
}
