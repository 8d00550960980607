#!/bin/sh
# Regenerate the sample documents in tests/fixtures/documents/ used by
# tests/unit/test_documents.py.  Needs ghostscript (gs) and qpdf; only the
# generated files are committed, so the tests themselves need neither.
# Ghostscript output embeds dates and IDs, so files differ byte-wise between
# runs, but page counts and colour never do.
set -eu
OUT="${1:-$(dirname "$0")/../tests/fixtures/documents}"
mkdir -p "$OUT"
cd "$OUT"
GS="gs -q -dSAFER -dBATCH -dNOPAUSE"

# --- hand-written PostScript sources (also fixtures themselves) -------------

# 5 pages: 1 grey (setgray), 2 red, 3 neutral RGB greys, 4 small blue mark on
# a black page, 5 CMYK black only.  Colour: pages 2 and 4.
cat > mixed5.ps <<'PS'
%!PS-Adobe-3.0
%%Title: mixed5
%%Creator: make_sample_documents.sh
%%Pages: 5
%%DocumentMedia: a4 595 842 80 white ()
%%EndComments
%%BeginProlog
/box { 4 2 roll moveto 1 index 0 rlineto 0 exch rlineto neg 0 rlineto closepath fill } bind def
%%EndProlog
%%Page: 1 1
0 setgray 72 72 200 200 box 0.6 setgray 300 300 100 50 box
gsave 300 500 translate 100 100 scale
8 8 8 [8 0 0 8 0 0] {<00204060a0c0e0ff00204060a0c0e0ff00204060a0c0e0ff00204060a0c0e0ff00204060a0c0e0ff00204060a0c0e0ff00204060a0c0e0ff00204060a0c0e0ff>} image
grestore
showpage
%%Page: 2 2
1 0 0 setrgbcolor 72 72 200 200 box
showpage
%%Page: 3 3
0 0 0 setrgbcolor 72 72 200 200 box 0.5 0.5 0.5 setrgbcolor 300 300 100 100 box
showpage
%%Page: 4 4
0 setgray 72 72 300 300 box 0 0 1 setrgbcolor 400 600 10 10 box
gsave 400 400 translate 50 50 scale
2 2 8 [2 0 0 2 0 0] {<ff0000 00ff00 0000ff 808080>} false 3 colorimage
grestore
showpage
%%Page: 5 5
0 0 0 1 setcmykcolor 72 72 200 200 box 0 0 0 0.4 setcmykcolor 300 300 50 50 box
showpage
%%EOF
PS

# 3 pages, all neutral (grey via setgray, RGB black, RGB grey, CMYK K).
cat > mono3.ps <<'PS'
%!PS-Adobe-3.0
%%Title: mono3
%%Creator: make_sample_documents.sh
%%Pages: 3
%%EndComments
%%Page: 1 1
0 setgray 72 72 moveto 300 0 rlineto 0 300 rlineto closepath fill
showpage
%%Page: 2 2
0 0 0 setrgbcolor 100 100 moveto 200 0 rlineto 0 200 rlineto closepath fill
showpage
%%Page: 3 3
0.5 0.5 0.5 setrgbcolor 100 100 moveto 200 0 rlineto 0 200 rlineto closepath fill
0 0 0 0.7 setcmykcolor 300 300 moveto 100 0 rlineto 0 100 rlineto closepath fill
showpage
%%EOF
PS

# %%Pages: (atend) with the real value in the trailer: 4 pages, colour on 3.
cat > atend4.ps <<'PS'
%!PS-Adobe-3.0
%%Title: atend4
%%Pages: (atend)
%%EndComments
%%Page: 1 1
0 setgray 72 72 moveto 100 0 rlineto 0 100 rlineto closepath fill showpage
%%Page: 2 2
0 setgray 72 72 moveto 100 0 rlineto 0 100 rlineto closepath fill showpage
%%Page: 3 3
0 1 0 setrgbcolor 72 72 moveto 100 0 rlineto 0 100 rlineto closepath fill showpage
%%Page: 4 4
0 setgray 72 72 moveto 100 0 rlineto 0 100 rlineto closepath fill showpage
%%Trailer
%%Pages: 4
%%EOF
PS

# 2 outer pages; page 1 embeds a whole document (with its own %%Pages: 3 and
# three %%Page: comments) between %%BeginDocument/%%EndDocument, with
# showpage disabled around it as DSC requires.  Mono.
cat > embedded2.ps <<'PS'
%!PS-Adobe-3.0
%%Title: embedded2
%%Pages: 2
%%EndComments
%%Page: 1 1
save /showpage {} def
%%BeginDocument: inner.ps
%!PS-Adobe-3.0
%%Pages: 3
%%EndComments
%%Page: 1 1
0 setgray 72 72 moveto 50 0 rlineto 0 50 rlineto closepath fill showpage
%%Page: 2 2
0 setgray 172 72 moveto 50 0 rlineto 0 50 rlineto closepath fill showpage
%%Page: 3 3
0 setgray 272 72 moveto 50 0 rlineto 0 50 rlineto closepath fill showpage
%%Trailer
%%EOF
%%EndDocument
restore
showpage
%%Page: 2 2
0 setgray 72 300 moveto 50 0 rlineto 0 50 rlineto closepath fill showpage
%%Trailer
%%EOF
PS

# No DSC comments at all: pages cannot be counted without an interpreter
# (ghostscript finds 3, page 2 in colour).
cat > nodsc3.ps <<'PS'
%!PS
/sq { moveto 100 0 rlineto 0 100 rlineto closepath fill } def
0 setgray 72 72 sq showpage
1 0 1 setrgbcolor 72 72 sq showpage
0.2 setgray 72 72 sq showpage
PS

# --- ghostscript conversions ------------------------------------------------
for src in mixed5 mono3; do
    $GS -sDEVICE=pdfwrite -o "$src.pdf" "$src.ps"
    $GS -sDEVICE=ps2write -o "$src-ps2write.ps" "$src.ps"
    $GS -sDEVICE=pxlmono -r150 -o "$src-pxlmono.pxl" "$src.ps"
    $GS -sDEVICE=pxlcolor -r150 -o "$src-pxlcolor.pxl" "$src.ps"
    $GS -sDEVICE=pwgraster -r36 -dcupsColorSpace=18 -dcupsBitsPerColor=8 \
        -o "$src-sgray.pwg" "$src.ps" 2>/dev/null
    $GS -sDEVICE=pwgraster -r36 -dcupsColorSpace=19 -dcupsBitsPerColor=8 \
        -o "$src-srgb.pwg" "$src.ps" 2>/dev/null
done
# ghostscript's urf device writes 1-bit sGray pages
$GS -sDEVICE=urf -r36 -o mono3.urf mono3.ps 2>/dev/null

# --- qpdf restructuring: xref streams, object streams, linearization, crypt --
qpdf --object-streams=generate mixed5.pdf mixed5-objstm.pdf
qpdf --linearize mixed5.pdf mixed5-linearized.pdf
qpdf --linearize --object-streams=generate mono3.pdf mono3-linearized-objstm.pdf
# AES-256, empty user password: /Count stays readable (uncompressed objects)
qpdf --encrypt "" owner 256 -- mono3.pdf mono3-encrypted.pdf
# Empty user password ("owner password only") with the page tree inside
# encrypted object streams: revision 6 (AES-256), 4 (AES-128), 3 (RC4-128), 2 (RC4-40)
qpdf --object-streams=generate --encrypt "" owner 256 -- mixed5.pdf mixed5-encrypted-objstm.pdf
qpdf --object-streams=generate --encrypt "" owner 128 --use-aes=y -- mono3.pdf mono3-aes128-objstm.pdf
qpdf --object-streams=generate --allow-weak-crypto --encrypt "" owner 128 --use-aes=n -- \
    mono3.pdf mono3-rc4-objstm.pdf
qpdf --object-streams=generate --allow-weak-crypto --encrypt "" owner 40 -- \
    mixed5.pdf mixed5-rc4-40-objstm.pdf
# a user password: ghostscript cannot open it either; countable only while the
# page tree is outside object streams
qpdf --encrypt secret owner 256 -- mixed5.pdf mixed5-userpw.pdf
qpdf --object-streams=generate --encrypt secret owner 256 -- mixed5.pdf mixed5-userpw-objstm.pdf
