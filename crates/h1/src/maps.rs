//! Header maps kept on each thread for the next head: a map's two allocations (its index and
//! its entries) and their release cost about as much as filling it, on every request. A map
//! the gateway is done with comes back ([`recycle`], emptied, its room kept) and the next
//! head read on the thread takes it ([`map_with_room`]). At most [`KEPT`] maps wait per
//! thread, none with room for more than [`MAX_ROOM`] fields: a few kilobytes per thread.

use std::cell::RefCell;

use http::HeaderMap;

/// Maps kept per thread, at most.
pub const KEPT: usize = 32;
/// A map with room for more fields than this is not kept.
pub const MAX_ROOM: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `room` fields: one kept on this thread when it has the room,
/// a new one otherwise.
pub fn map_with_room(room: usize) -> HeaderMap {
    let kept = SPARE.with(|spare| spare.borrow_mut().pop());
    match kept {
        Some(map) if map.capacity() >= room => map,
        _ => HeaderMap::with_capacity(room),
    }
}

/// Gives `map` back for the next head read on this thread, emptied (its room kept), unless
/// enough are kept already or it is large.
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_ROOM {
        return;
    }
    map.clear();
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < KEPT {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_map_comes_back_empty_with_its_room() {
        let mut map = map_with_room(10);
        map.insert(http::header::SERVER, http::HeaderValue::from_static("x"));
        let room = map.capacity();
        recycle(map);
        let again = map_with_room(8);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        // One smaller than asked for is not handed out.
        recycle(again);
        let larger = map_with_room(room + 1);
        assert!(larger.capacity() > room);
    }

    #[test]
    fn at_most_kept_maps_wait_and_large_ones_are_not_kept() {
        for _ in 0..KEPT + 8 {
            recycle(HeaderMap::with_capacity(4));
        }
        assert_eq!(SPARE.with(|spare| spare.borrow().len()), KEPT);
        SPARE.with(|spare| spare.borrow_mut().clear());
        recycle(HeaderMap::with_capacity(MAX_ROOM * 2));
        assert_eq!(SPARE.with(|spare| spare.borrow().len()), 0);
    }
}
