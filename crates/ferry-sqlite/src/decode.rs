//! Turning page-level changes into row changes: per transaction and per b-tree, never per
//! page.
//!
//! Input: a *before* state (the shadow, plus pages of earlier transactions of the batch) and
//! an *after* state (before overlaid with the transaction's pages, cut to its database size),
//! and the set `P` of pages the transaction wrote. Output: schema changes, then the net row
//! changes with full before/after images, keyed by the declared primary key (the rowid where
//! none is declared).
//!
//! The [`TreeIndex`] maps every page of every captured table's b-tree (interior, leaf and
//! overflow pages) to its tree, its parent and its role, as of the before state. For a
//! transaction, a tree is *affected* when one of its pages is in `P`. Every ancestor of such a
//! page is *dirty*. A page that is neither in `P` nor dirty, and belonged to the same tree
//! before, has a subtree no byte of which changed: it holds the same cells before and after,
//! so both traversals prune there. The after-tree is walked first from its root (descending
//! into pages of `P`, dirty pages and pages new to the tree); the before-tree is then walked,
//! pruning only at clean pages the after-walk also reached (a clean subtree that was cut off
//! — freed without being rewritten, a "ghost" — is read, so its rows count as deleted). The
//! cells found on the two walks are compared by rowid (table b-trees) or by whole payload
//! (WITHOUT ROWID index b-trees), identical cells cancel (rows that merely moved between
//! pages), and the rest are decoded and compared by key: only before → delete, only after →
//! insert, both and different → update; a change of primary key is a delete plus an insert.
//! An overflow-only change (exp7) dirties the leaf that owns the overflow page, so the row is
//! re-read on both sides.
//!
//! Schema changes are seen through the schema cookie (header offset 40), not through page 1
//! being written (it is rewritten whenever the file grows). When the cookie moves, both
//! versions of `sqlite_schema` are read; a table whose definition or root page changed (ALTER,
//! 12-step rebuild, VACUUM, auto_vacuum root moves) is compared in full — before-rows carried
//! over to the new definition by column name exactly as `ferry_core::fold` does, against the
//! after-rows — so a rebuild or a VACUUM yields only the real differences, usually none. The
//! index is then rebuilt from the after state.

use crate::format::btree::{BtreePage, Cell, PageKind, assemble_payload};
use crate::format::{DbHeader, FormatError, TextEncoding, decode_record};
use crate::pages::{Page, PageError, PageSource};
use crate::schema::{SchemaError, captured_tables};
use ferry_core::{
    Affinity, Generated, KeyColumns, RowChange, SchemaChange, SchemaChangeKind, SchemaRow,
    SnapshotRow, TableSchema, Value,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Page numbers are small dense integers: a multiplicative hash is enough and far cheaper
/// than SipHash on the per-transaction hot path.
#[derive(Default, Clone, Copy)]
pub struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A set of page numbers.
pub type PageSet = HashSet<u32, BuildHasherDefault<PageHasher>>;
type PageMap<V> = HashMap<u32, V, BuildHasherDefault<PageHasher>>;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(
        "table {table:?} has two rows with primary key {key:?} (SQLite allows NULL in a non-INTEGER primary key of a rowid table); ferry cannot key such a table by its primary key: declare the key NOT NULL or fix the rows"
    )]
    DuplicateKey { table: String, key: Vec<Value> },
    #[error(
        "the page size changed from {from} to {to} (VACUUM with a new page_size); take a new snapshot"
    )]
    PageSizeChanged { from: usize, to: usize },
    #[error("b-tree rooted at page {root} reaches page {pgno} twice: the database is corrupt")]
    Cycle { root: u32, pgno: u32 },
}

impl From<FormatError> for DecodeError {
    fn from(e: FormatError) -> Self {
        DecodeError::Page(PageError::Format(e))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Interior,
    Leaf,
    Overflow,
}

#[derive(Clone, Copy, Debug)]
struct PageOwner {
    root: u32,
    parent: u32,
    role: Role,
}

/// How the fields of a stored record map onto the columns of a table.
#[derive(Clone, Debug)]
struct RecordLayout {
    /// For each stored field, the column it fills.
    fields: Vec<usize>,
    ncols: usize,
    rowid_alias: Option<usize>,
    real: Vec<bool>,
    defaults: Vec<Value>,
    /// WITHOUT ROWID: number of leading key fields.
    without_rowid: bool,
}

impl RecordLayout {
    fn new(t: &TableSchema) -> RecordLayout {
        let stored = |i: &usize| t.columns[*i].generated != Some(Generated::Virtual);
        let mut fields: Vec<usize> = Vec::new();
        if t.without_rowid {
            if let KeyColumns::PrimaryKey(pk) = &t.key {
                fields.extend(pk.iter().copied());
            }
            let rest: Vec<usize> = (0..t.columns.len())
                .filter(|i| !fields.contains(i))
                .filter(stored)
                .collect();
            fields.extend(rest);
        } else {
            fields.extend((0..t.columns.len()).filter(stored));
        }
        RecordLayout {
            fields,
            ncols: t.columns.len(),
            rowid_alias: t.rowid_alias,
            real: t
                .columns
                .iter()
                .map(|c| c.affinity == Affinity::Real)
                .collect(),
            defaults: t
                .columns
                .iter()
                .map(|c| c.default_value.clone().unwrap_or(Value::Null))
                .collect(),
            without_rowid: t.without_rowid,
        }
    }

    fn row(&self, record: Vec<Value>, rowid: i64) -> Vec<Value> {
        let mut row: Vec<Option<Value>> = vec![None; self.ncols];
        for (v, &col) in record.into_iter().zip(&self.fields) {
            row[col] = Some(v);
        }
        let mut out: Vec<Value> = row
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Some(v) => v,
                // Not in the record: a row older than an ADD COLUMN (stored columns), or a
                // VIRTUAL generated column (not stored; ferry cannot evaluate it).
                None if self.fields.contains(&i) => self.defaults[i].clone(),
                None => Value::Null,
            })
            .collect();
        if !self.without_rowid
            && let Some(a) = self.rowid_alias
            && out[a].is_null()
        {
            out[a] = Value::Integer(rowid);
        }
        for (v, &real) in out.iter_mut().zip(&self.real) {
            if real && let Value::Integer(i) = *v {
                *v = Value::Real(i as f64);
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
struct TableInfo {
    root: u32,
    schema: TableSchema,
    layout: RecordLayout,
}

/// The schema as capture knows it: `sqlite_schema` rows and the captured tables.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub cookie: u32,
    pub rows: Vec<SchemaRow>,
    tables: BTreeMap<String, Arc<TableInfo>>,
}

impl Catalog {
    pub fn read(src: &dyn PageSource, geo: &Geometry) -> Result<Catalog, DecodeError> {
        let page1 = src.page(1)?;
        let hdr = DbHeader::parse(&page1)?;
        let mut rows = Vec::new();
        walk_table(src, geo, 1, &mut |_rowid, payload, pg| {
            let rec = decode_record(&payload, pg, geo.encoding)?;
            let text = |i: usize| match rec.get(i) {
                Some(Value::Text(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            };
            rows.push(SchemaRow {
                kind: text(0).unwrap_or_default(),
                name: text(1).unwrap_or_default(),
                tbl_name: text(2).unwrap_or_default(),
                rootpage: rec.get(3).and_then(Value::as_i64).unwrap_or(0),
                sql: text(4),
            });
            Ok(())
        })?;
        let mut tables = BTreeMap::new();
        for (root, schema) in captured_tables(&rows)? {
            let layout = RecordLayout::new(&schema);
            tables.insert(
                schema.name.clone(),
                Arc::new(TableInfo {
                    root: u32::try_from(root).unwrap_or(0),
                    schema,
                    layout,
                }),
            );
        }
        Ok(Catalog {
            cookie: hdr.schema_cookie,
            rows,
            tables,
        })
    }

    /// Captured tables in `sqlite_schema` order.
    pub fn tables(&self) -> Vec<TableSchema> {
        let mut out: Vec<(usize, TableSchema)> = self
            .tables
            .values()
            .map(|t| {
                let pos = self
                    .rows
                    .iter()
                    .position(|r| r.name == t.schema.name)
                    .unwrap_or(usize::MAX);
                (pos, t.schema.clone())
            })
            .collect();
        out.sort_by_key(|(p, _)| *p);
        out.into_iter().map(|(_, t)| t).collect()
    }
}

/// Page geometry and text encoding of a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub page_size: usize,
    pub usable: usize,
    pub encoding: TextEncoding,
}

impl Geometry {
    pub fn from_header(h: &DbHeader) -> Geometry {
        Geometry {
            page_size: h.page_size,
            usable: h.usable_size(),
            encoding: h.encoding,
        }
    }
}

/// Walks a whole table b-tree in key order, calling `f(rowid, payload, leaf page)`.
fn walk_table(
    src: &dyn PageSource,
    geo: &Geometry,
    root: u32,
    f: &mut dyn FnMut(i64, Vec<u8>, u32) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(pg) = stack.pop() {
        if !seen.insert(pg) {
            return Err(DecodeError::Cycle { root, pgno: pg });
        }
        let data = src.page(pg)?;
        let page = BtreePage::parse(pg, &data, geo.usable)?;
        match page.kind {
            PageKind::TableLeaf => {
                for i in 0..page.cell_count {
                    let c = page.cell(i)?;
                    let (payload, _) = payload_of(src, geo, &c)?;
                    f(c.rowid, payload, pg)?;
                }
            }
            PageKind::TableInterior => {
                let mut ch = page.children()?;
                ch.reverse();
                stack.extend(ch);
            }
            _ => {
                return Err(FormatError::at(
                    pg,
                    0,
                    format!("index page inside table b-tree rooted at {root}"),
                )
                .into());
            }
        }
    }
    Ok(())
}

fn payload_of(
    src: &dyn PageSource,
    geo: &Geometry,
    c: &Cell<'_>,
) -> Result<(Vec<u8>, Vec<u32>), DecodeError> {
    if c.first_overflow.is_none() {
        return Ok((c.local.to_vec(), Vec::new()));
    }
    assemble_payload(c, geo.usable, src.page_count(), |p| {
        src.page(p).map_err(DecodeError::from)
    })
}

/// A cell collected by a walk: rowid (table trees) and where its whole payload is.
struct CollectedCell {
    rowid: i64,
    payload: CellBytes,
}

/// A payload without overflow is borrowed from a page the walk keeps (by index, so that a
/// cell costs no reference count); one with overflow is assembled.
enum CellBytes {
    Local { page: u32, start: u32, len: u32 },
    Owned(Vec<u8>),
}

/// The result of walking one tree in one state.
#[derive(Default)]
struct Walk {
    cells: Vec<CollectedCell>,
    /// The leaf (and index interior) pages whose cells are borrowed.
    pages: Vec<Page>,
    /// Pages read, with parent and role.
    visited: Vec<(u32, u32, Role)>,
    /// Clean subtrees not descended into: (page, parent).
    pruned: Vec<(u32, u32)>,
    /// Interior pages whose children were taken from the page index instead of the page
    /// (see [`Shortcut`]).
    shortcut: Vec<u32>,
}

impl Walk {
    fn bytes<'a>(&'a self, c: &'a CollectedCell) -> &'a [u8] {
        match &c.payload {
            CellBytes::Local { page, start, len } => {
                let (s, l) = (*start as usize, *len as usize);
                &self.pages[*page as usize][s..s + l]
            }
            CellBytes::Owned(v) => v,
        }
    }
}

/// The page index's answer to "which children of this interior page can have changed":
/// for an interior page the transaction did not write, its child pointers (and, in an index
/// b-tree, its cells) are the same before and after, so only the children on a path to a
/// written page need reading; the rest are clean on both sides. The before-walk takes the
/// shortcut at exactly the pages the after-walk took it at, so both skip the same cells.
struct Shortcut<'a> {
    applies: &'a dyn Fn(u32) -> bool,
    dirty_children: &'a PageMap<Vec<u32>>,
}

/// The cells of leaf pages the last incremental walks parsed, by page number, with the page
/// they were parsed from: the next transaction's "before" walk meets the same page (the very
/// same bytes, the same `Arc`) that this one's "after" walk parsed — a hot leaf rewritten by
/// every small transaction is parsed once per transaction instead of twice.
#[derive(Default)]
struct LeafCache {
    /// The geometry the cells were parsed with (a cell's extent depends on it).
    geometry: Option<Geometry>,
    leaves: HashMap<u32, (Page, Vec<LocalCell>)>,
}

/// A cell whose payload lies on its page: rowid, start, length.
type LocalCell = (i64, u32, u32);

/// Entries kept at most (a bound on memory; the cache is emptied when it is reached).
const LEAF_CACHE_PAGES: usize = 4096;

/// How a walk uses the [`LeafCache`].
enum CacheUse<'a> {
    Off,
    /// Reuse what is there (a "before" walk: the old versions of pages it parses are not met
    /// again, so they are not kept).
    Read(&'a LeafCache),
    /// Reuse, and keep what this walk parses (an "after" walk).
    Keep(&'a mut LeafCache),
}

/// Page `pg` of the tree at `root` parsed, checked to be of the tree's kind (table or
/// index), and its role in the tree.
fn tree_page<'a>(
    pg: u32,
    data: &'a [u8],
    geo: &Geometry,
    root: u32,
    without_rowid: bool,
) -> Result<(BtreePage<'a>, Role), DecodeError> {
    let page = BtreePage::parse(pg, data, geo.usable)?;
    if page.kind.is_table() == without_rowid {
        return Err(FormatError::at(
            pg,
            0,
            format!("page kind {:?} in the b-tree rooted at {root}", page.kind),
        )
        .into());
    }
    let role = if page.kind.is_leaf() {
        Role::Leaf
    } else {
        Role::Interior
    };
    Ok((page, role))
}

/// One thing [`visit_tree`] meets: a page, with its parent and role, or a cell's payload.
enum Visit<'a> {
    Page { pgno: u32, parent: u32, role: Role },
    Cell { rowid: i64, payload: &'a [u8] },
}

/// Visits the whole tree at `root` a page at a time, meeting pages and cells in the order
/// [`walk`] collects them (table trees in rowid order), but keeping neither: memory bounded
/// by the tree's depth and fan-out, not by its size. For whole-table scans of any size (the
/// initial snapshot, the page index), which held every leaf page of the table at once when
/// they went through [`walk`] (300 MB database: 374 MiB peak RSS).
fn visit_tree(
    src: &dyn PageSource,
    geo: &Geometry,
    root: u32,
    without_rowid: bool,
    f: &mut dyn FnMut(Visit<'_>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut seen = PageSet::default();
    let mut stack = vec![(root, 0u32)];
    while let Some((pg, parent)) = stack.pop() {
        if !seen.insert(pg) {
            return Err(DecodeError::Cycle { root, pgno: pg });
        }
        let data = src.page(pg)?;
        let (page, role) = tree_page(pg, &data, geo, root, without_rowid)?;
        f(Visit::Page {
            pgno: pg,
            parent,
            role,
        })?;
        if page.kind != PageKind::TableInterior {
            for i in 0..page.cell_count {
                let c = page.cell(i)?;
                if c.first_overflow.is_none() {
                    f(Visit::Cell {
                        rowid: c.rowid,
                        payload: c.local,
                    })?;
                } else {
                    let (payload, overflow) = payload_of(src, geo, &c)?;
                    for o in overflow {
                        f(Visit::Page {
                            pgno: o,
                            parent: pg,
                            role: Role::Overflow,
                        })?;
                    }
                    f(Visit::Cell {
                        rowid: c.rowid,
                        payload: &payload,
                    })?;
                }
            }
        }
        if !page.kind.is_leaf() {
            let mut children = page.children()?;
            children.reverse();
            stack.extend(children.into_iter().map(|c| (c, pg)));
        }
    }
    Ok(())
}

/// Walks the tree at `root` in `src`, not descending into pages for which `prune` holds.
/// Without a shortcut, cells come in key order (rowid order for table trees); with one, in
/// no particular order.
/// With a cache, leaves parsed before from the very same bytes are not parsed again.
fn walk(
    src: &dyn PageSource,
    geo: &Geometry,
    root: u32,
    without_rowid: bool,
    prune: &dyn Fn(u32) -> bool,
    shortcut: Option<&Shortcut<'_>>,
    mut cache: CacheUse<'_>,
) -> Result<Walk, DecodeError> {
    match &mut cache {
        CacheUse::Keep(c) if c.geometry.as_ref() != Some(geo) => {
            c.leaves.clear();
            c.geometry = Some(*geo);
        }
        // Cells parsed with another geometry are not these pages' cells.
        CacheUse::Read(c) if c.geometry.as_ref() != Some(geo) => cache = CacheUse::Off,
        _ => {}
    }
    let mut w = Walk::default();
    let mut seen = PageSet::default();
    // In-order for table trees: children pushed right to left.
    let mut stack = vec![(root, 0u32)];
    while let Some((pg, parent)) = stack.pop() {
        if pg != root && prune(pg) {
            w.pruned.push((pg, parent));
            continue;
        }
        if !seen.insert(pg) {
            return Err(DecodeError::Cycle { root, pgno: pg });
        }
        let data = src.page(pg)?;
        let (page, role) = tree_page(pg, &data, geo, root, without_rowid)?;
        w.visited.push((pg, parent, role));
        if !page.kind.is_leaf()
            && let Some(sc) = shortcut
            && (sc.applies)(pg)
        {
            w.shortcut.push(pg);
            if let Some(ch) = sc.dirty_children.get(&pg) {
                stack.extend(ch.iter().map(|&c| (c, pg)));
            }
            continue;
        }
        if page.kind.is_leaf()
            && let Some(c) = match &cache {
                CacheUse::Read(c) => Some(&**c),
                CacheUse::Keep(c) => Some(&**c),
                CacheUse::Off => None,
            }
            && let Some((cached, cells)) = c.leaves.get(&pg)
            && Arc::ptr_eq(cached, &data)
        {
            // Parsed before from these very bytes (leaves have no children to push).
            let idx = w.pages.len() as u32;
            w.cells.reserve(cells.len());
            w.cells
                .extend(cells.iter().map(|&(rowid, start, len)| CollectedCell {
                    rowid,
                    payload: CellBytes::Local {
                        page: idx,
                        start,
                        len,
                    },
                }));
            w.pages.push(data.clone());
            continue;
        }
        if page.kind != PageKind::TableInterior {
            let idx = w.pages.len() as u32;
            let first_cell = w.cells.len();
            let mut borrowed = false;
            w.cells.reserve(page.cell_count);
            for i in 0..page.cell_count {
                let c = page.cell(i)?;
                let payload = if c.first_overflow.is_none() {
                    borrowed = true;
                    let start = c.local.as_ptr() as usize - data.as_ptr() as usize;
                    CellBytes::Local {
                        page: idx,
                        start: start as u32,
                        len: c.local.len() as u32,
                    }
                } else {
                    let (payload, ovf) = payload_of(src, geo, &c)?;
                    for o in ovf {
                        w.visited.push((o, pg, Role::Overflow));
                    }
                    CellBytes::Owned(payload)
                };
                w.cells.push(CollectedCell {
                    rowid: c.rowid,
                    payload,
                });
            }
            if borrowed {
                w.pages.push(data.clone());
            }
            if page.kind.is_leaf()
                && let CacheUse::Keep(c) = &mut cache
            {
                let parsed = &w.cells[first_cell..];
                // Only pages whose cells all live on the page (an overflowing cell's
                // payload depends on other pages too).
                if parsed
                    .iter()
                    .all(|c| matches!(c.payload, CellBytes::Local { .. }))
                {
                    if c.leaves.len() >= LEAF_CACHE_PAGES && !c.leaves.contains_key(&pg) {
                        c.leaves.clear();
                    }
                    // The page's previous entry (its older version) lends its buffer.
                    let entry = c.leaves.entry(pg).or_default();
                    entry.0 = data.clone();
                    entry.1.clear();
                    entry
                        .1
                        .extend(parsed.iter().filter_map(|c| match c.payload {
                            CellBytes::Local { start, len, .. } => Some((c.rowid, start, len)),
                            CellBytes::Owned(_) => None,
                        }));
                }
            }
        }
        if !page.kind.is_leaf() {
            let mut ch = page.children()?;
            ch.reverse();
            stack.extend(ch.into_iter().map(|c| (c, pg)));
        }
    }
    Ok(w)
}

/// Which tree every page of a captured table belongs to, as of the shadow's state.
#[derive(Default)]
pub struct TreeIndex {
    owners: PageMap<PageOwner>,
}

impl TreeIndex {
    fn build(
        src: &dyn PageSource,
        geo: &Geometry,
        catalog: &Catalog,
    ) -> Result<TreeIndex, DecodeError> {
        let mut idx = TreeIndex::default();
        for t in catalog.tables.values() {
            if t.root == 0 || t.root > src.page_count() {
                continue;
            }
            visit_tree(src, geo, t.root, t.schema.without_rowid, &mut |v| {
                if let Visit::Page { pgno, parent, role } = v {
                    idx.owners.insert(
                        pgno,
                        PageOwner {
                            root: t.root,
                            parent,
                            role,
                        },
                    );
                }
                Ok(())
            })?;
        }
        Ok(idx)
    }

    fn record(&mut self, root: u32, w: &Walk) {
        for &(pg, parent, role) in &w.visited {
            self.owners.insert(pg, PageOwner { root, parent, role });
        }
        for &(pg, parent) in &w.pruned {
            if let Some(o) = self.owners.get_mut(&pg) {
                o.parent = parent;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

/// The decoder's state: geometry, schema and page index as of the shadow.
pub struct Decoder {
    pub geometry: Geometry,
    pub catalog: Catalog,
    index: TreeIndex,
    leaf_cache: LeafCache,
}

/// The decoded effect of one transaction.
#[derive(Debug, Default)]
pub struct Decoded {
    pub schema_changes: Vec<SchemaChange>,
    pub changes: Vec<RowChange>,
}

impl Decoder {
    /// Builds the decoder from a full state (the shadow): reads the schema and indexes every
    /// captured table's pages.
    pub fn build(src: &dyn PageSource) -> Result<Decoder, DecodeError> {
        let page1 = src.page(1)?;
        let hdr = DbHeader::parse(&page1)?;
        let geometry = Geometry::from_header(&hdr);
        let catalog = Catalog::read(src, &geometry)?;
        let index = TreeIndex::build(src, &geometry, &catalog)?;
        Ok(Decoder {
            geometry,
            catalog,
            index,
            leaf_cache: LeafCache::default(),
        })
    }

    pub fn indexed_pages(&self) -> usize {
        self.index.len()
    }

    /// Streams every row of `table` in `src` (which must be the state the decoder describes)
    /// to `f`, in rowid (or key) order.
    pub fn scan_table(
        &self,
        src: &dyn PageSource,
        table: &str,
        f: &mut dyn FnMut(SnapshotRow) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        let Some(t) = self.catalog.tables.get(table) else {
            return Ok(());
        };
        for_each_row(src, &self.geometry, t, &mut |rowid, values| {
            let rowid = (!t.schema.without_rowid).then_some(rowid);
            f(SnapshotRow { rowid, values })
        })
    }

    /// Decodes one transaction: `changed` are the pages it wrote (or, for a resync, every page
    /// that differs between the states). Updates the decoder's schema and page index to the
    /// after state.
    pub fn decode(
        &mut self,
        before: &dyn PageSource,
        after: &dyn PageSource,
        changed: &PageSet,
    ) -> Result<Decoded, DecodeError> {
        let mut out = Decoded::default();
        let new_hdr = if changed.contains(&1) {
            let p = after.page(1)?;
            Some(DbHeader::parse(&p)?)
        } else {
            None
        };
        if let Some(h) = &new_hdr
            && h.page_size != self.geometry.page_size
        {
            return Err(DecodeError::PageSizeChanged {
                from: self.geometry.page_size,
                to: h.page_size,
            });
        }
        let cookie_changed = new_hdr.is_some_and(|h| h.schema_cookie != self.catalog.cookie);
        let new_catalog = if cookie_changed {
            Some(Catalog::read(after, &self.geometry)?)
        } else {
            None
        };

        // Tables compared in full (schema or root changed) are handled below.
        let mut full: Vec<(Option<Arc<TableInfo>>, Arc<TableInfo>)> = Vec::new();
        let mut incremental: Vec<Arc<TableInfo>> = Vec::new();
        if let Some(nc) = &new_catalog {
            let (sc, f, inc) = schema_diff(&self.catalog, nc);
            out.schema_changes = sc;
            full = f;
            incremental = inc;
        } else {
            // Only trees that own a written page (or whose root was written) are cloned.
            let touched: PageSet = changed
                .iter()
                .filter_map(|p| self.index.owners.get(p).map(|o| o.root))
                .chain(changed.iter().copied())
                .collect();
            incremental.extend(
                self.catalog
                    .tables
                    .values()
                    .filter(|t| touched.contains(&t.root))
                    .cloned(),
            );
        }

        // Dirty pages: the ancestors of every written page that a captured tree owns, and for
        // each dirty page's parent the dirty children it leads to.
        let mut dirty = PageSet::default();
        let mut dirty_children: PageMap<Vec<u32>> = PageMap::default();
        let mut affected_roots: HashSet<u32> = HashSet::new();
        for &p in changed {
            if let Some(o) = self.index.owners.get(&p) {
                affected_roots.insert(o.root);
                let mut cur = if o.role == Role::Overflow {
                    o.parent
                } else {
                    p
                };
                let mut guard = 0;
                while cur != 0 && guard < 64 {
                    if !dirty.insert(cur) {
                        break;
                    }
                    let parent = self.index.owners.get(&cur).map_or(0, |o| o.parent);
                    if parent != 0 {
                        dirty_children.entry(parent).or_default().push(cur);
                    }
                    cur = parent;
                    guard += 1;
                }
            }
        }
        for t in &incremental {
            if changed.contains(&t.root) {
                affected_roots.insert(t.root);
            }
        }

        for t in incremental {
            if !affected_roots.contains(&t.root) {
                continue;
            }
            self.incremental_diff(
                before,
                after,
                changed,
                &dirty,
                &dirty_children,
                &t,
                &mut out.changes,
            )?;
        }
        for (old, new) in full {
            full_diff(
                before,
                after,
                &self.geometry,
                old.as_deref(),
                &new,
                &mut out.changes,
            )?;
        }
        if let Some(nc) = new_catalog {
            self.index = TreeIndex::build(after, &self.geometry, &nc)?;
            self.catalog = nc;
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn incremental_diff(
        &mut self,
        before: &dyn PageSource,
        after: &dyn PageSource,
        changed: &PageSet,
        dirty: &PageSet,
        dirty_children: &PageMap<Vec<u32>>,
        t: &TableInfo,
        out: &mut Vec<RowChange>,
    ) -> Result<(), DecodeError> {
        let owners = &self.index.owners;
        let root = t.root;
        let clean = |p: u32| {
            !changed.contains(&p)
                && !dirty.contains(&p)
                && owners
                    .get(&p)
                    .is_some_and(|o| o.root == root && o.role != Role::Overflow)
        };
        let unwritten_interior = |p: u32| {
            !changed.contains(&p)
                && owners
                    .get(&p)
                    .is_some_and(|o| o.root == root && o.role == Role::Interior)
        };
        let after_shortcut = Shortcut {
            applies: &unwritten_interior,
            dirty_children,
        };
        let mut new_walk = if root <= after.page_count() {
            walk(
                after,
                &self.geometry,
                root,
                t.schema.without_rowid,
                &clean,
                Some(&after_shortcut),
                CacheUse::Keep(&mut self.leaf_cache),
            )?
        } else {
            Walk::default()
        };
        let reached: PageSet = new_walk.pruned.iter().map(|(p, _)| *p).collect();
        let taken: PageSet = new_walk.shortcut.iter().copied().collect();
        let took = |p: u32| taken.contains(&p);
        let before_shortcut = Shortcut {
            applies: &took,
            dirty_children,
        };
        let mut old_walk = walk(
            before,
            &self.geometry,
            root,
            t.schema.without_rowid,
            &|p| clean(p) && reached.contains(&p),
            Some(&before_shortcut),
            CacheUse::Read(&self.leaf_cache),
        )?;
        if !t.schema.without_rowid {
            // Shortcuts push children in no particular order; the merge wants rowid order
            // (each leaf's run is already sorted, so this is cheap).
            for cells in [&mut new_walk.cells, &mut old_walk.cells] {
                // A walk that took no shortcut is in order already: skip the sort's buffer.
                if !cells.is_sorted_by_key(|c| c.rowid) {
                    cells.sort_by_key(|c| c.rowid);
                }
            }
        }
        diff_cells(t, t, &self.geometry, &old_walk, &new_walk, out)?;
        for &(pg, _, _) in &old_walk.visited {
            if self.index.owners.get(&pg).is_some_and(|o| o.root == root) {
                self.index.owners.remove(&pg);
            }
        }
        self.index.record(root, &new_walk);
        Ok(())
    }
}

/// Compares two catalogs: the schema changes (ordered so that the fold can apply them one by
/// one: drops, renames, alters, creates, then indexes/views/triggers), the tables to compare
/// in full, and the tables to diff incrementally.
#[allow(clippy::type_complexity)]
fn schema_diff(
    old: &Catalog,
    new: &Catalog,
) -> (
    Vec<SchemaChange>,
    Vec<(Option<Arc<TableInfo>>, Arc<TableInfo>)>,
    Vec<Arc<TableInfo>>,
) {
    let row_of = |c: &Catalog, name: &str| {
        c.rows
            .iter()
            .find(|r| r.kind == "table" && r.name == name)
            .cloned()
    };
    let mut drops = Vec::new();
    let mut renames = Vec::new();
    let mut alters = Vec::new();
    let mut creates = Vec::new();
    let mut full = Vec::new();
    let mut incremental = Vec::new();
    let old_only: Vec<&Arc<TableInfo>> = old
        .tables
        .values()
        .filter(|t| !new.tables.contains_key(&t.schema.name))
        .collect();
    let mut renamed_from: HashSet<String> = HashSet::new();
    for nt in new.tables.values() {
        let name = &nt.schema.name;
        match old.tables.get(name) {
            Some(ot) if ot.schema.sql == nt.schema.sql && ot.root == nt.root => {
                incremental.push(nt.clone())
            }
            Some(ot) => {
                if ot.schema.sql != nt.schema.sql {
                    alters.push(SchemaChange {
                        kind: SchemaChangeKind::AlterTable,
                        table: name.clone(),
                        before: row_of(old, name),
                        after: row_of(new, name),
                        schema: Some(nt.schema.clone()),
                    });
                }
                full.push((Some(ot.clone()), nt.clone()));
            }
            None => {
                if let Some(ot) = old_only
                    .iter()
                    .find(|o| o.root == nt.root && !renamed_from.contains(&o.schema.name))
                {
                    renamed_from.insert(ot.schema.name.clone());
                    renames.push(SchemaChange {
                        kind: SchemaChangeKind::RenameTable {
                            from: ot.schema.name.clone(),
                        },
                        table: name.clone(),
                        before: row_of(old, &ot.schema.name),
                        after: row_of(new, name),
                        schema: Some(nt.schema.clone()),
                    });
                    full.push((Some((*ot).clone()), nt.clone()));
                } else {
                    creates.push(SchemaChange {
                        kind: SchemaChangeKind::CreateTable,
                        table: name.clone(),
                        before: None,
                        after: row_of(new, name),
                        schema: Some(nt.schema.clone()),
                    });
                    full.push((None, nt.clone()));
                }
            }
        }
    }
    for ot in old_only {
        if !renamed_from.contains(&ot.schema.name) {
            drops.push(SchemaChange {
                kind: SchemaChangeKind::DropTable,
                table: ot.schema.name.clone(),
                before: row_of(old, &ot.schema.name),
                after: None,
                schema: None,
            });
        }
    }
    let mut others = Vec::new();
    let key = |r: &SchemaRow| (r.kind.clone(), r.name.clone());
    let old_rows: HashMap<_, _> = old
        .rows
        .iter()
        .filter(|r| r.kind != "table")
        .map(|r| (key(r), r))
        .collect();
    let new_rows: HashMap<_, _> = new
        .rows
        .iter()
        .filter(|r| r.kind != "table")
        .map(|r| (key(r), r))
        .collect();
    let mut names: Vec<_> = old_rows.keys().chain(new_rows.keys()).cloned().collect();
    names.sort();
    names.dedup();
    for k in names {
        let (b, a) = (old_rows.get(&k), new_rows.get(&k));
        if b.map(|r| (&r.sql, r.rootpage)) != a.map(|r| (&r.sql, r.rootpage)) {
            others.push(SchemaChange {
                kind: SchemaChangeKind::Other,
                table: k.1.clone(),
                before: b.map(|r| (*r).clone()),
                after: a.map(|r| (*r).clone()),
                schema: None,
            });
        }
    }
    let mut sc = drops;
    sc.extend(renames);
    sc.extend(alters);
    sc.extend(creates);
    sc.extend(others);
    (sc, full, incremental)
}

/// Rows of a whole table in `src`: (rowid, row).
fn all_rows(
    src: &dyn PageSource,
    geo: &Geometry,
    t: &TableInfo,
) -> Result<Vec<(i64, Vec<Value>)>, DecodeError> {
    if t.root == 0 || t.root > src.page_count() {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for_each_row(src, geo, t, &mut |rowid, row| {
        rows.push((rowid, row));
        Ok(())
    })?;
    Ok(rows)
}

/// Every row of table `t` in `src` as (rowid, values), in [`visit_tree`]'s order, a page at
/// a time.
fn for_each_row(
    src: &dyn PageSource,
    geo: &Geometry,
    t: &TableInfo,
    f: &mut dyn FnMut(i64, Vec<Value>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    visit_tree(src, geo, t.root, t.schema.without_rowid, &mut |v| {
        if let Visit::Cell { rowid, payload } = v {
            let rec = decode_record(payload, t.root, geo.encoding)?;
            f(rowid, t.layout.row(rec, rowid))?;
        }
        Ok(())
    })
}

/// Compares a table in full: the before rows (carried over to the new definition by column
/// name, as `ferry_core::fold` carries them) against the after rows.
fn full_diff(
    before: &dyn PageSource,
    after: &dyn PageSource,
    geo: &Geometry,
    old: Option<&TableInfo>,
    new: &TableInfo,
    out: &mut Vec<RowChange>,
) -> Result<(), DecodeError> {
    let mut old_rows: BTreeMap<Vec<Value>, Vec<Value>> = BTreeMap::new();
    if let Some(ot) = old {
        // The fold keeps rows in a map keyed by the old key and carries them in that order;
        // later rows win on a collision of new keys. Reproduce that exactly.
        let mut by_old_key: BTreeMap<Vec<Value>, (i64, Vec<Value>)> = BTreeMap::new();
        for (rowid, row) in all_rows(before, geo, ot)? {
            by_old_key.insert(ot.schema.key_of(&row, Some(rowid)), (rowid, row));
        }
        let map: Vec<Option<usize>> = new
            .schema
            .columns
            .iter()
            .map(|c| ot.schema.column_index(&c.name))
            .collect();
        let old_rowid_key = ot.schema.keyed_by_rowid();
        for (okey, (_rowid, values)) in by_old_key {
            let nv: Vec<Value> = map
                .iter()
                .zip(&new.schema.columns)
                .map(|(src, col)| match src {
                    Some(i) => values.get(*i).cloned().unwrap_or(Value::Null),
                    None => col.default_value.clone().unwrap_or(Value::Null),
                })
                .collect();
            let rowid = if old_rowid_key {
                okey.first().and_then(Value::as_i64)
            } else {
                ot.schema
                    .rowid_alias
                    .and_then(|i| values.get(i))
                    .and_then(Value::as_i64)
            };
            old_rows.insert(new.schema.key_of(&nv, rowid), nv);
        }
    }
    let mut new_rows: BTreeMap<Vec<Value>, Vec<Value>> = BTreeMap::new();
    for (rowid, row) in all_rows(after, geo, new)? {
        let k = new.schema.key_of(&row, Some(rowid));
        if new_rows.insert(k.clone(), row).is_some() {
            return Err(DecodeError::DuplicateKey {
                table: new.schema.name.clone(),
                key: k,
            });
        }
    }
    emit_keyed(&new.schema.name, old_rows, new_rows, out);
    Ok(())
}

fn emit_keyed(
    table: &str,
    old: BTreeMap<Vec<Value>, Vec<Value>>,
    mut new: BTreeMap<Vec<Value>, Vec<Value>>,
    out: &mut Vec<RowChange>,
) {
    for (k, before) in old {
        match new.remove(&k) {
            Some(after) if after == before => {}
            Some(after) => out.push(RowChange::update(table, k, before, after)),
            None => out.push(RowChange::delete(table, k, before)),
        }
    }
    for (k, after) in new {
        out.push(RowChange::insert(table, k, after));
    }
}

/// Compares the cells two walks collected for one table.
fn diff_cells(
    old_t: &TableInfo,
    new_t: &TableInfo,
    geo: &Geometry,
    old_w: &Walk,
    new_w: &Walk,
    out: &mut Vec<RowChange>,
) -> Result<(), DecodeError> {
    let name = &new_t.schema.name;
    let (old, new): (Vec<&CollectedCell>, Vec<&CollectedCell>) = if new_t.schema.without_rowid {
        // Index b-tree: identical payloads are identical rows.
        let new_set: HashSet<&[u8]> = new_w.cells.iter().map(|c| new_w.bytes(c)).collect();
        let old_set: HashSet<&[u8]> = old_w.cells.iter().map(|c| old_w.bytes(c)).collect();
        let o = old_w
            .cells
            .iter()
            .filter(|c| !new_set.contains(old_w.bytes(c)))
            .collect();
        let n = new_w
            .cells
            .iter()
            .filter(|c| !old_set.contains(new_w.bytes(c)))
            .collect();
        (o, n)
    } else {
        // Table b-tree: both walks are in rowid order; merge and drop identical cells.
        let (mut o, mut n) = (Vec::new(), Vec::new());
        let mut oi = old_w.cells.iter().peekable();
        let mut ni = new_w.cells.iter().peekable();
        loop {
            match (oi.peek(), ni.peek()) {
                (Some(a), Some(b)) if a.rowid == b.rowid => {
                    let (a, b) = (oi.next(), ni.next());
                    if let (Some(a), Some(b)) = (a, b)
                        && old_w.bytes(a) != new_w.bytes(b)
                    {
                        o.push(a);
                        n.push(b);
                    }
                }
                (Some(a), Some(b)) if a.rowid < b.rowid => o.extend(oi.next()),
                (Some(_), Some(_)) => n.extend(ni.next()),
                (Some(_), None) => o.extend(oi.next()),
                (None, Some(_)) => n.extend(ni.next()),
                (None, None) => break,
            }
        }
        (o, n)
    };
    if old.is_empty() && new.is_empty() {
        return Ok(());
    }
    let keyed = |t: &TableInfo,
                 w: &Walk,
                 cells: Vec<&CollectedCell>|
     -> Result<BTreeMap<Vec<Value>, Vec<Value>>, DecodeError> {
        let mut m = BTreeMap::new();
        for c in cells {
            let rec = decode_record(w.bytes(c), t.root, geo.encoding)?;
            let row = t.layout.row(rec, c.rowid);
            let k = t.schema.key_of(&row, Some(c.rowid));
            if m.insert(k.clone(), row).is_some() {
                return Err(DecodeError::DuplicateKey {
                    table: t.schema.name.clone(),
                    key: k,
                });
            }
        }
        Ok(m)
    };
    let o = keyed(old_t, old_w, old)?;
    let n = keyed(new_t, new_w, new)?;
    emit_keyed(name, o, n, out);
    Ok(())
}

/// Every page that differs between two states (for a resync or a rollback-journal poll).
pub fn differing_pages(a: &dyn PageSource, b: &dyn PageSource) -> Result<PageSet, DecodeError> {
    let mut out = PageSet::default();
    let n = a.page_count().max(b.page_count());
    for p in 1..=n {
        if p > a.page_count() || p > b.page_count() {
            out.insert(p);
            continue;
        }
        let (x, y): (Page, Page) = (a.page(p)?, b.page(p)?);
        if x != y {
            out.insert(p);
        }
    }
    Ok(out)
}
