//! Comparison of two row streams ordered by key: the heart of `verify`.
//!
//! Both sides arrive sorted by the same key order; one merge pass finds the keys only on the
//! left (missing on the right), only on the right (extra), and present on both with different
//! values. The caller supplies the value comparison, so the same merge serves SQLite against
//! PostgreSQL (with the shipper's conversion rules) and log folds against databases.

use std::cmp::Ordering;

/// Which side a differing key is wrong on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiffKind {
    /// Only on the left (missing on the right).
    Missing,
    /// Only on the right.
    Extra,
    /// On both sides with different values.
    Different,
}

/// How many keys of each kind a [`Comparison`] keeps as examples.
pub const EXAMPLE_KEYS: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison<K> {
    pub left_rows: u64,
    pub right_rows: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    pub first_missing: Vec<K>,
    pub first_extra: Vec<K>,
    pub first_different: Vec<K>,
    /// Every differing key (missing, extra or different) in key order, up to the cap given
    /// to [`compare_sorted_keeping`] (empty for [`compare_sorted`]).
    pub differing_keys: Vec<(DiffKind, K)>,
}

impl<K> Default for Comparison<K> {
    fn default() -> Self {
        Comparison {
            left_rows: 0,
            right_rows: 0,
            missing: 0,
            extra: 0,
            different: 0,
            first_missing: Vec::new(),
            first_extra: Vec::new(),
            first_different: Vec::new(),
            differing_keys: Vec::new(),
        }
    }
}

impl<K> Comparison<K> {
    /// Adds the differences of `other`, a comparison of some keys again (not its row counts:
    /// those rows are already counted here).
    pub fn absorb_differences(&mut self, other: Comparison<K>) {
        self.missing += other.missing;
        self.extra += other.extra;
        self.different += other.different;
        for (list, more) in [
            (&mut self.first_missing, other.first_missing),
            (&mut self.first_extra, other.first_extra),
            (&mut self.first_different, other.first_different),
        ] {
            let room = EXAMPLE_KEYS.saturating_sub(list.len());
            list.extend(more.into_iter().take(room));
        }
        self.differing_keys.extend(other.differing_keys);
    }

    pub fn is_equal(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }

    /// Whether every differing key was kept, so the counts can be explained key by key.
    pub fn kept_every_key(&self) -> bool {
        (self.missing + self.extra + self.different) as usize == self.differing_keys.len()
    }

    /// Takes the differences whose key satisfies `in_flight` out of the counts and the
    /// example lists (a live comparison reads both sides at slightly different moments, so a
    /// key that changed meanwhile proves nothing either way) and returns how many it set
    /// aside. Does nothing and returns `None` when not every differing key was kept: the
    /// counts could not be corrected honestly.
    pub fn set_aside(&mut self, mut in_flight: impl FnMut(&K) -> bool) -> Option<u64>
    where
        K: Clone,
    {
        if !self.kept_every_key() {
            return None;
        }
        let mut set_aside = 0;
        self.differing_keys.retain(|(kind, k)| {
            if !in_flight(k) {
                return true;
            }
            set_aside += 1;
            match kind {
                DiffKind::Missing => self.missing -= 1,
                DiffKind::Extra => self.extra -= 1,
                DiffKind::Different => self.different -= 1,
            }
            false
        });
        for (list, want) in [
            (&mut self.first_missing, DiffKind::Missing),
            (&mut self.first_extra, DiffKind::Extra),
            (&mut self.first_different, DiffKind::Different),
        ] {
            *list = self
                .differing_keys
                .iter()
                .filter(|(kind, _)| *kind == want)
                .take(EXAMPLE_KEYS)
                .map(|(_, k)| k.clone())
                .collect();
        }
        Some(set_aside)
    }
}

/// Error from a comparison: either side's stream failed, or a side was not in key order.
#[derive(Debug, thiserror::Error)]
pub enum CompareError<E> {
    #[error(transparent)]
    Stream(E),
    #[error("the {side} side is not sorted by key (a key arrived after a greater one)")]
    Unsorted { side: &'static str },
}

/// Merges two key-ordered streams. `ord` orders keys; `same` decides whether the left and
/// right values of one key are equal.
pub fn compare_sorted<K, L, R, E>(
    left: impl IntoIterator<Item = Result<(K, L), E>>,
    right: impl IntoIterator<Item = Result<(K, R), E>>,
    ord: impl FnMut(&K, &K) -> Ordering,
    same: impl FnMut(&L, &R) -> bool,
) -> Result<Comparison<K>, CompareError<E>>
where
    K: Clone,
{
    compare_sorted_keeping(left, right, ord, same, 0)
}

/// [`compare_sorted`], also keeping up to `keep` differing keys in
/// [`Comparison::differing_keys`] (memory stays bounded by the cap, not the table).
pub fn compare_sorted_keeping<K, L, R, E>(
    left: impl IntoIterator<Item = Result<(K, L), E>>,
    right: impl IntoIterator<Item = Result<(K, R), E>>,
    mut ord: impl FnMut(&K, &K) -> Ordering,
    mut same: impl FnMut(&L, &R) -> bool,
    keep: usize,
) -> Result<Comparison<K>, CompareError<E>>
where
    K: Clone,
{
    let mut out = Comparison::default();
    let keep_key = |v: &mut Vec<(DiffKind, K)>, kind: DiffKind, k: &K| {
        if v.len() < keep {
            v.push((kind, k.clone()));
        }
    };
    let mut left = left.into_iter();
    let mut right = right.into_iter();
    let mut next_l = || left.next().transpose().map_err(CompareError::Stream);
    let mut l = next_l()?;
    let mut r = right.next().transpose().map_err(CompareError::Stream)?;
    let mut last_l: Option<K> = None;
    let mut last_r: Option<K> = None;
    loop {
        if let Some((k, _)) = &l
            && last_l.as_ref().is_some_and(|p| ord(p, k) != Ordering::Less)
        {
            return Err(CompareError::Unsorted { side: "left" });
        }
        if let Some((k, _)) = &r
            && last_r.as_ref().is_some_and(|p| ord(p, k) != Ordering::Less)
        {
            return Err(CompareError::Unsorted { side: "right" });
        }
        match (l.take(), r.take()) {
            (None, None) => break,
            (Some((lk, _)), None) => {
                out.left_rows += 1;
                out.missing += 1;
                push(&mut out.first_missing, &lk);
                keep_key(&mut out.differing_keys, DiffKind::Missing, &lk);
                last_l = Some(lk);
                l = next_l()?;
            }
            (None, Some((rk, _))) => {
                out.right_rows += 1;
                out.extra += 1;
                push(&mut out.first_extra, &rk);
                keep_key(&mut out.differing_keys, DiffKind::Extra, &rk);
                last_r = Some(rk);
                r = right.next().transpose().map_err(CompareError::Stream)?;
            }
            (Some((lk, lv)), Some((rk, rv))) => match ord(&lk, &rk) {
                Ordering::Less => {
                    out.left_rows += 1;
                    out.missing += 1;
                    push(&mut out.first_missing, &lk);
                    keep_key(&mut out.differing_keys, DiffKind::Missing, &lk);
                    last_l = Some(lk);
                    l = next_l()?;
                    r = Some((rk, rv));
                }
                Ordering::Greater => {
                    out.right_rows += 1;
                    out.extra += 1;
                    push(&mut out.first_extra, &rk);
                    keep_key(&mut out.differing_keys, DiffKind::Extra, &rk);
                    last_r = Some(rk);
                    r = right.next().transpose().map_err(CompareError::Stream)?;
                    l = Some((lk, lv));
                }
                Ordering::Equal => {
                    out.left_rows += 1;
                    out.right_rows += 1;
                    if !same(&lv, &rv) {
                        out.different += 1;
                        push(&mut out.first_different, &lk);
                        keep_key(&mut out.differing_keys, DiffKind::Different, &lk);
                    }
                    last_l = Some(lk);
                    last_r = Some(rk);
                    l = next_l()?;
                    r = right.next().transpose().map_err(CompareError::Stream)?;
                }
            },
        }
    }
    Ok(out)
}

fn push<K: Clone>(v: &mut Vec<K>, k: &K) {
    if v.len() < EXAMPLE_KEYS {
        v.push(k.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T>(v: Vec<T>) -> Vec<Result<T, ()>> {
        v.into_iter().map(Ok).collect()
    }

    #[test]
    fn set_aside_corrects_counts_and_examples() {
        let l = ok(vec![(1, "a"), (2, "b"), (4, "d"), (6, "f")]);
        let r = ok(vec![(2, "b"), (3, "c"), (4, "X"), (5, "e")]);
        let mut c =
            compare_sorted_keeping(l, r, |a: &i32, b: &i32| a.cmp(b), |a, b| a == b, 10).unwrap();
        assert_eq!((c.missing, c.extra, c.different), (2, 2, 1));
        assert_eq!(c.set_aside(|k| *k == 1 || *k == 4), Some(2));
        assert_eq!((c.missing, c.extra, c.different), (1, 2, 0));
        assert_eq!(c.first_missing, vec![6]);
        assert_eq!(c.first_extra, vec![3, 5]);
        assert!(c.first_different.is_empty());
        // With keys dropped by the cap, nothing can be set aside honestly.
        let l = ok(vec![(1, "a"), (2, "b")]);
        let mut c = compare_sorted_keeping(
            l,
            ok(vec![]),
            |a: &i32, b: &i32| a.cmp(b),
            |a: &&str, b: &&str| a == b,
            1,
        )
        .unwrap();
        assert_eq!(c.set_aside(|_| true), None);
        assert_eq!(c.missing, 2);
    }

    #[test]
    fn finds_missing_extra_and_different() {
        let l = ok(vec![(1, "a"), (2, "b"), (4, "d"), (5, "e")]);
        let r = ok(vec![(2, "b"), (3, "c"), (4, "X"), (5, "e")]);
        let c = compare_sorted(l, r, |a: &i32, b: &i32| a.cmp(b), |a, b| a == b).unwrap();
        assert_eq!((c.left_rows, c.right_rows), (4, 4));
        assert_eq!((c.missing, c.extra, c.different), (1, 1, 1));
        assert_eq!(c.first_missing, vec![1]);
        assert_eq!(c.first_extra, vec![3]);
        assert_eq!(c.first_different, vec![4]);
        assert!(!c.is_equal());
        assert!(c.differing_keys.is_empty());
        let l = ok(vec![(1, "a"), (2, "b"), (4, "d"), (5, "e")]);
        let r = ok(vec![(2, "b"), (3, "c"), (4, "X"), (5, "e")]);
        let c =
            compare_sorted_keeping(l, r, |a: &i32, b: &i32| a.cmp(b), |a, b| a == b, 2).unwrap();
        assert_eq!(
            c.differing_keys.iter().map(|(_, k)| *k).collect::<Vec<_>>(),
            vec![1, 3],
            "capped at 2, in key order"
        );
    }

    #[test]
    fn equal_streams_are_equal() {
        let l = ok(vec![(1, 1), (2, 2)]);
        let r = ok(vec![(1, 1), (2, 2)]);
        let c = compare_sorted(l, r, |a: &i32, b: &i32| a.cmp(b), |a, b| a == b).unwrap();
        assert!(c.is_equal());
    }

    #[test]
    fn unsorted_input_is_an_error() {
        let l = ok(vec![(2, 1), (1, 1)]);
        let r = ok(vec![]);
        let e = compare_sorted(l, r, |a: &i32, b: &i32| a.cmp(b), |a: &i32, b: &i32| a == b)
            .unwrap_err();
        assert!(matches!(e, CompareError::Unsorted { side: "left" }));
    }
}
