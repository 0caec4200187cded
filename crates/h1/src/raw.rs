//! An answer's fields left as they were read (`RawFields`), for a proxy that writes them
//! straight through instead of filling a map and emptying it again.

use std::cell::RefCell;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::head::Fields;

/// An answer's end-to-end fields as they were read: their names, and their values as
/// positions in the head's bytes — no map filled and emptied again, for a proxy that writes
/// them straight through. The hop-by-hop fields are read past ([`crate::is_hop_by_hop`]); the
/// answer's `Connection` names no other field ([`crate::ResponseHead::raw`]).
///
/// Boxed (a pointer where the bytes and the list are seven words: the futures and answers that
/// carry it are moved several times per request), the boxes kept per thread as maps are.
#[derive(Debug)]
pub struct RawFields(Box<Raw>);

#[derive(Debug, Default)]
struct Raw {
    bytes: Bytes,
    fields: Fields,
    /// The body, when it came whole with the head: carried here, the proxy's to take.
    body: Option<Bytes>,
    /// One field the proxy sets on the answer, in place of the upstream's of that name.
    own: Option<(HeaderName, HeaderValue)>,
    /// While the box waits: the last answer's map, emptied, for the next answer (the box's
    /// own spare, so neither is looked for on the thread).
    map: HeaderMap,
}

/// The value at `at` in a head's `bytes`, sharing them; `None` for one `http` refuses.
pub(crate) fn value_at(bytes: &Bytes, at: std::ops::Range<usize>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes.slice(at)).ok()
}

thread_local! {
    // The boxes themselves are what is kept: each is handed out again as it is.
    #[allow(clippy::vec_box)]
    static SPARE_RAW: RefCell<Vec<Box<Raw>>> = const { RefCell::new(Vec::new()) };
}

impl RawFields {
    /// `bytes` (a head's) and its fields, the list taken from `fields`, which gets the box's
    /// emptied one; with the answer's map: the one the box kept, or a new one with room for
    /// `room` fields. The box is one the thread kept when it has one.
    pub(crate) fn new(bytes: Bytes, fields: &mut Fields, room: usize) -> (Self, HeaderMap) {
        let mut raw = SPARE_RAW
            .with(|spare| spare.borrow_mut().pop())
            .unwrap_or_default();
        raw.bytes = bytes;
        std::mem::swap(&mut raw.fields, fields);
        let map = match std::mem::take(&mut raw.map) {
            map if map.capacity() >= room => map,
            _ => crate::maps::map_with_room(room),
        };
        (Self(raw), map)
    }

    /// The end-to-end fields in the order they came.
    /// Those [`set_own`](Self::set_own) replaces are left out.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &[u8])> {
        let raw = &*self.0;
        let own = raw.own.as_ref().map(|(name, _)| name);
        raw.fields
            .iter()
            .filter(move |(name, _)| !crate::is_hop_by_hop(name) && own != Some(name))
            .map(|(name, at)| (name, &raw.bytes[at.clone()]))
    }

    /// Sets one field of the proxy's own on the answer, in place of the upstream's of that name
    /// (an answer's request id): carried here rather than put in a map, which would hash its
    /// name — the writer writes it after the upstream's fields.
    pub fn set_own(&mut self, name: HeaderName, value: HeaderValue) {
        self.0.own = Some((name, value));
    }

    /// The field [`set_own`](Self::set_own) set.
    pub fn own(&self) -> Option<(&HeaderName, &HeaderValue)> {
        self.0.own.as_ref().map(|(name, value)| (name, value))
    }

    /// Carries `body`, the answer's whole body (read with its head), for the proxy to take.
    pub fn set_body(&mut self, body: Option<Bytes>) {
        self.0.body = body;
    }

    /// The body [`set_body`](Self::set_body) left, taken.
    pub fn take_body(&mut self) -> Option<Bytes> {
        self.0.body.take()
    }

    /// The length of the body it carries (0: none).
    pub fn body_len(&self) -> usize {
        self.0.body.as_ref().map_or(0, Bytes::len)
    }

    /// How many fields were read (hop-by-hop ones included).
    pub fn len(&self) -> usize {
        self.0.fields.len()
    }

    /// Whether the answer had no fields at all.
    pub fn is_empty(&self) -> bool {
        self.0.fields.is_empty()
    }

    /// The fields in a map, as a proxy that keeps one sees them: the end-to-end fields but
    /// those `over` holds, in their order, then `over`'s (what the proxy set on the answer).
    /// A value `http` refuses is left out (there is none: `httparse` refuses the same bytes).
    pub fn into_map(mut self, over: HeaderMap) -> HeaderMap {
        let own = self.0.own.take();
        let raw = &*self.0;
        let mut headers = crate::maps::map_with_room(raw.fields.len() + over.len() + 1);
        for (name, at) in &raw.fields {
            let replaced = over.contains_key(name) || own.as_ref().is_some_and(|(n, _)| n == name);
            if !crate::is_hop_by_hop(name) && !replaced {
                if let Some(value) = value_at(&raw.bytes, at.clone()) {
                    headers.append(name.clone(), value);
                }
            }
        }
        let mut last = None;
        for (name, value) in over {
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                headers.append(name.clone(), value);
            }
        }
        if let Some((name, value)) = own {
            headers.insert(name, value);
        }
        self.recycle();
        headers
    }

    /// Done with, and so is the answer's `map`: the head's bytes are let go, the box, its list
    /// and the map (emptied) serve the next answer on this thread.
    pub fn recycle_with(mut self, mut map: HeaderMap) {
        if map.capacity() <= crate::maps::MAX_ROOM {
            map.clear();
            self.0.map = map;
        }
        self.recycle();
    }

    /// Done with: the head's bytes are let go, the box and its list serve the next answer on
    /// this thread (unless enough wait already, or the list is large).
    pub fn recycle(self) {
        let mut raw = self.0;
        raw.bytes = Bytes::new();
        raw.body = None;
        raw.own = None;
        if raw.fields.capacity() > crate::maps::MAX_ROOM {
            return;
        }
        raw.fields.clear();
        SPARE_RAW.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < crate::maps::KEPT {
                spare.push(raw);
            }
        });
    }
}

/// How many boxes wait on this thread (`clear` first empties the list): for tests elsewhere.
#[cfg(test)]
pub(crate) fn spare_boxes(clear: bool) -> usize {
    SPARE_RAW.with(|spare| {
        let mut spare = spare.borrow_mut();
        if clear {
            spare.clear();
        }
        spare.len()
    })
}
