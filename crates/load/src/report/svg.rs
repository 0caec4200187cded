//! Line charts as inline SVG, written by hand: no script, no font files, no CDN.
