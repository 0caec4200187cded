//! Cursor pagination, the same for every list of the admin API: `?limit=N` (1–500, default
//! 100) and `?cursor=C`, where `C` is the `next_cursor` of the previous page (`null` on the
//! last). A cursor names the last item of a page, so a page never repeats or skips an item
//! that stayed while others came and went (an offset would).
//!
//! Lists kept in a database ask it for `limit + 1` rows after the cursor ([`Page::split`]);
//! lists held in memory (active alerts, silences, sessions, lockouts) are ordered by their key
//! and cut here ([`Page::cut`]).

use std::str::FromStr;

use http::StatusCode;

use crate::{error, AdminResponse};

/// A page holds this many items unless `limit` says otherwise …
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// … and at most this many.
pub(crate) const MAX_LIMIT: usize = 500;

/// What a request asked for: how many, after which item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page<C> {
    pub limit: usize,
    pub cursor: Option<C>,
}

/// A 400 `BAD_REQUEST` naming the parameter: "`name=value`: why".
pub(crate) fn bad_parameter(name: &str, value: &str, why: &str) -> AdminResponse {
    error(
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
        &format!("`{name}={value}`: {why}"),
    )
}

impl<C: FromStr> Page<C> {
    /// Reads `limit` and `cursor` from `query`, and hands every other parameter to `other`,
    /// which returns why it refuses one (an unknown name — list the known ones —, a bad value).
    pub(crate) fn parse(
        query: Option<&str>,
        mut other: impl FnMut(&str, &str) -> Result<(), String>,
    ) -> Result<Self, Box<AdminResponse>> {
        let mut page = Page {
            limit: DEFAULT_LIMIT,
            cursor: None,
        };
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match name.as_ref() {
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => page.limit = n,
                    _ => {
                        return Err(Box::new(bad_parameter(
                            &name,
                            &value,
                            &format!("limit is 1 to {MAX_LIMIT}"),
                        )))
                    }
                },
                "cursor" => match value.parse::<C>() {
                    Ok(cursor) => page.cursor = Some(cursor),
                    Err(_) => {
                        return Err(Box::new(bad_parameter(
                            &name,
                            &value,
                            "the cursor is the `next_cursor` of a page",
                        )))
                    }
                },
                _ => other(&name, &value)
                    .map_err(|why| Box::new(bad_parameter(&name, &value, &why)))?,
            }
        }
        Ok(page)
    }

    /// For a list with no parameter of its own.
    pub(crate) fn parse_plain(query: Option<&str>) -> Result<Self, Box<AdminResponse>> {
        Self::parse(query, |_, _| {
            Err("unknown parameter (limit, cursor)".to_owned())
        })
    }

    /// How many rows to ask a database for: one more than the page tells whether a next
    /// page exists.
    pub(crate) fn fetch(&self) -> usize {
        self.limit + 1
    }

    /// Cuts rows fetched with [`Page::fetch`] to the page, and names the next page's cursor.
    pub(crate) fn split<T, K>(
        &self,
        mut rows: Vec<T>,
        key: impl Fn(&T) -> K,
    ) -> (Vec<T>, Option<K>) {
        let more = rows.len() > self.limit;
        rows.truncate(self.limit);
        let next = if more { rows.last().map(key) } else { None };
        (rows, next)
    }
}

impl<C: FromStr + Ord + Clone> Page<C> {
    /// One page of a list held in memory: ordered by `key`, the items after the cursor.
    pub(crate) fn cut<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> C) -> (Vec<T>, Option<C>) {
        items.sort_by_cached_key(|item| key(item));
        if let Some(cursor) = &self.cursor {
            items.retain(|item| key(item) > *cursor);
        }
        items.truncate(self.fetch());
        self.split(items, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_cursor_are_read_and_the_rest_goes_to_the_caller() {
        let mut seen = Vec::new();
        let page = Page::<u64>::parse(Some("limit=2&cursor=7&state=dead"), |name, value| {
            seen.push(format!("{name}={value}"));
            Ok(())
        })
        .ok();
        assert_eq!(
            page,
            Some(Page {
                limit: 2,
                cursor: Some(7)
            })
        );
        assert_eq!(seen, ["state=dead"]);
        assert_eq!(
            Page::<u64>::parse_plain(None).ok(),
            Some(Page {
                limit: DEFAULT_LIMIT,
                cursor: None
            })
        );
    }

    #[test]
    fn a_bad_limit_cursor_or_parameter_is_a_400() {
        for query in [
            "limit=0",
            "limit=501",
            "limit=x",
            "cursor=abc",
            "colour=red",
        ] {
            let refused = Page::<u64>::parse_plain(Some(query)).err();
            assert_eq!(
                refused.map(|r| r.status()),
                Some(StatusCode::BAD_REQUEST),
                "{query}"
            );
        }
    }

    #[test]
    fn pages_in_memory_follow_the_key_and_end_with_no_cursor() {
        let items = vec![5_u64, 1, 4, 2, 3];
        let first = Page {
            limit: 2,
            cursor: None,
        };
        let (rows, next) = first.cut(items.clone(), |n| *n);
        assert_eq!((rows, next), (vec![1, 2], Some(2)));
        let second = Page {
            limit: 2,
            cursor: next,
        };
        let (rows, next) = second.cut(items.clone(), |n| *n);
        assert_eq!((rows, next), (vec![3, 4], Some(4)));
        let last = Page {
            limit: 2,
            cursor: next,
        };
        assert_eq!(last.cut(items.clone(), |n| *n), (vec![5], None));
        // A full last page has no next page either.
        let exact = Page {
            limit: 5,
            cursor: None,
        };
        assert_eq!(exact.cut(items, |n| *n), (vec![1, 2, 3, 4, 5], None));
    }
}
