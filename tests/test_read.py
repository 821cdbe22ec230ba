"""Reading Parquet/CSV/TSV: exact windows, text kept as written, and clear errors for bad files."""

from __future__ import annotations

import bz2
import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scorer.data.labels import read_labelled
from scorer.data.read import TableReader
from scorer.errors import InputError


def write_parquet(path, table, row_group_size=None):
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_windows_are_exact_and_in_order_across_row_groups(tmp_path):
    table = pa.table({"id": list(range(1000)), "sentence": [f"s{i}" for i in range(1000)]})
    path = write_parquet(tmp_path / "in.parquet", table, row_group_size=96)
    windows = list(TableReader(path).batches(250))
    assert [w.num_rows for w in windows] == [250, 250, 250, 250]
    assert pa.concat_tables(windows).column("id").to_pylist() == list(range(1000))
    resumed = list(TableReader(path).batches(300, skip_rows=500))
    assert [w.num_rows for w in resumed] == [300, 200]
    assert resumed[0].column("id")[0].as_py() == 500


@pytest.mark.parametrize("row_group_size", [None, 96, 40_000])
def test_resuming_at_any_row_reads_exactly_the_rest_in_big_and_small_row_groups(tmp_path, row_group_size):
    """A row group bigger than the reader's batches (pandas writes up to 1M rows in one) is read a batch at a time;
    resuming skips whole groups unread and starts inside the first one that is not finished."""
    n = 50_000
    table = pa.table({"id": list(range(n)), "sentence": [f"s{i}" for i in range(n)]})
    path = write_parquet(tmp_path / "in.parquet", table, row_group_size=row_group_size)
    for skip in (0, 1, 95, 96, 16_383, 16_384, 40_001, n - 1, n):
        windows = list(TableReader(path).batches(7_000, skip_rows=skip))
        assert all(w.num_rows == 7_000 for w in windows[:-1])
        ids = pa.concat_tables(windows).column("id").to_pylist() if windows else []
        assert ids == list(range(skip, n)), skip


def test_csv_columns_stay_text_exactly_as_written(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,sentence,label\n007,"quoted, with comma",1\n010,"two\nlines",0\n')
    table = pa.concat_tables(TableReader(path).batches(10))
    assert table.column("id").to_pylist() == ["007", "010"]
    assert table.column("sentence").to_pylist() == ["quoted, with comma", "two\nlines"]


def test_tsv_keeps_quotes_literally(tmp_path):
    path = tmp_path / "in.tsv"
    path.write_text('sentence\tlabel\nhe said "hi\t1\nok\t0\n')
    data = read_labelled(path, "sentence", "label")
    assert data.texts == ['he said "hi', "ok"]
    assert data.labels == [1, 0]


def test_missing_column_lists_the_columns(tmp_path):
    path = write_parquet(tmp_path / "in.parquet", pa.table({"id": [1], "body": ["x"]}))
    with pytest.raises(InputError, match=r"column 'sentence' not found in .*/in.parquet; columns are id, body; "
                                         r"pass --text-column"):
        TableReader(path).require("sentence", "--text-column")


def test_a_missing_column_whose_header_differs_in_spaces_or_case_is_named_as_written(tmp_path):
    """Spaces around a CSV header's names and another case are easy to miss: the names are quoted, the match
    offered."""
    spaced, upper = tmp_path / "spaced.csv", tmp_path / "upper.csv"
    spaced.write_text(" sentence , label \nhi,1\n")
    upper.write_text("Sentence,Label\nhi,1\n")
    with pytest.raises(InputError, match=r"columns are ' sentence ', ' label '; pass --text-column ' sentence ' "):
        TableReader(spaced).require("sentence", "--text-column")
    with pytest.raises(InputError, match=r"columns are Sentence, Label; pass --label-column 'Label' "):
        TableReader(upper).require("label", "--label-column")


@pytest.mark.parametrize("name,content,said", [
    ("semi.csv", "sentence;label\nhi;1\n", "';', not ','"),
    ("tabs.csv", "sentence\tlabel\nhi\t1\n", "'\\t', not ','"),
    ("commas.tsv", "sentence,label\nhi,1\n", "',', not '\\t'"),
])
def test_a_file_with_another_separator_is_named_as_such(tmp_path, name, content, said):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError) as error:
        TableReader(path).require("sentence", "--text-column")
    assert f"{name} has one column" in str(error.value) and f"its fields are separated by {said}" in str(error.value)
    with pytest.raises(InputError, match="column 'body' not found in"):  # one column without a separator in it
        TableReader(_one_column(tmp_path)).require("body", "--text-column")


def _one_column(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("sentence\nhi\n")
    return path


@pytest.mark.parametrize(
    "content,message",
    [
        (b"a,b\n1,2\n3,4,5\n", r"line 3 \(expected 2 fields, found 3\)"),
        # a quote left open reads the lines after it as one record: the line where it opened is named, not the last
        (b"a,b\n1,2\n\"oops,1\n3,4\n5,6\n", r"bad.csv line 3 \(a quote there is not closed where it was meant to "
                                         r"be: lines 3-5 read as one record of 1 field\(s\), 2 expected\): quote that "
                                         r"value whole .* or remove the stray quote$"),
        (b"a,b\n1,2\n\"two\nlines\",3,4\n", r"line 3 \(expected 2 fields, found 3 in the record on lines 3-4\)"),
        (b"a,b\n1,2\n\xff\xfe,4\n", r"line 3: bytes that are not UTF-8 \(a file saved in another encoding"),
        (b"sent\xe9nce\nx\n", r"bad.csv line 1 \(the header\): bytes that are not UTF-8 .* \(iconv -f cp1252 -t utf-8 "
                                r"bad.csv > utf8-bad.csv\)"),
        (b"", r"is empty \(no header line\); nothing to read: write its header line, or leave the file out"),
        (b" \r\n\n", r"is empty"),
        # blank lines above the header: not an empty file, and not one to read with a blank line for its header
        (b"\n\nsentence\nA cat sat.\n", r"bad.csv: its first line is blank, and scorer takes the column names from the "
                                       r"first line; remove the blank line\(s\) above the header \(sed '/./,\$!d' "
                                       r"bad.csv > fixed-bad.csv\)$"),
    ],
)
def test_bad_csv_names_the_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        list(TableReader(path).batches(100))


def _xlsx(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as book:
        book.writestr("xl/workbook.xml", "<workbook/>")


def _parquet_bytes(tmp_path):
    path = write_parquet(tmp_path / "real.parquet", pa.table({"sentence": ["A cat sat."]}))
    return path.read_bytes()


_CSV = "sentence,label\nA cat sat.,1\nÉté chaud.,0\n"


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("day.csv", lambda t: gzip.compress(_CSV.encode()), "day.csv is gzip-compressed; name it day.csv.gz"),
        ("day.tsv", lambda t: bz2.compress(_CSV.encode()), "day.tsv is bzip2-compressed; name it day.tsv.bz2"),
        ("day.csv", lambda t: _compressed(t, _CSV.encode(), "zstd"), "day.csv is zstd-compressed; name it day.csv.zst"),
        ("day.csv.zst", lambda t: gzip.compress(_CSV.encode()),
         "day.csv.zst is gzip-compressed, not zstd-compressed; name it day.csv.gz"),
        ("day.csv.gz", lambda t: ("\ufeff" + _CSV).encode(), "day.csv.gz is plain text, not gzip-compressed; name it "
                                                              "day.csv"),
        ("day.csv", _parquet_bytes, "day.csv is a Parquet file, not CSV; name it day.parquet"),
        ("day.csv.gz", _parquet_bytes, "day.csv.gz is a Parquet file, not CSV; name it day.parquet"),
        ("day.csv", None, "day.csv is a ZIP archive (an Excel .xlsx workbook, say), not CSV text; save it as CSV "
                          "UTF-8"),
        ("day.tsv", lambda t: _CSV.replace(",", "\t").encode("utf-16"),
         "day.tsv is UTF-16 text (as Excel saves 'Unicode Text'), not UTF-8; re-encode it as UTF-8 (iconv -f utf-16"),
        ("day.csv", lambda t: _CSV.encode("utf-16-le"), "day.csv is UTF-16 text"),  # no byte-order mark
        ("day.parquet", lambda t: _CSV.encode(), "day.parquet holds text, not Parquet (a CSV file?); name it day.csv"),
        ("day.parquet", lambda t: _CSV.replace(",", "\t").encode(), "(a TSV file?); name it day.tsv"),
        ("day.parquet", lambda t: gzip.compress(_parquet_bytes(t)),
         "day.parquet is gzip-compressed, not a Parquet file"),
        ("day.parquet", lambda t: b"", "day.parquet is empty (0 bytes), not a Parquet file"),
    ],
)
def test_a_file_that_is_not_what_its_name_says_is_named_for_what_it_is(tmp_path, name, content, message):
    """A gzip file named .csv, an Excel workbook or UTF-16 text saved as .csv, a CSV named .parquet: each is told
    for what it is, with what to do, not given another problem's advice (re-encode from Windows-1252)."""
    path = tmp_path / name
    if content is None:
        _xlsx(path)
    else:
        path.write_bytes(content(tmp_path))
    with pytest.raises(InputError) as error:
        TableReader(path)
    assert message in str(error.value)
    assert "cp1252" not in str(error.value)


def _compressed(tmp_path, data, codec):
    path = tmp_path / f"data.{codec}"
    with pa.output_stream(str(path), compression=codec) as stream:
        stream.write(data)
    return path.read_bytes()


@pytest.mark.parametrize("name,text", [
    ("ok.csv", _CSV), ("ok.csv", "\ufeff" + _CSV), ("ok.tsv", "BZh91AY&SY\tlabel\nx\t1\n"),
    ("ok.csv", "PAR1,label\nx,1\n"), ("ok.csv", "sentence\n" + "é" * 40 + "\n"),
])
def test_what_its_first_bytes_could_be_mistaken_for_is_still_read(tmp_path, name, text):
    """Text that starts like a signature (a header "BZh91AY&SY", "PAR1"), or whose first bytes cut a character, is
    read as the text it is."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert TableReader(path).read_all().num_rows >= 1
    for codec in ("gz", "bz2"):
        packed = tmp_path / f"{name}.{codec}"
        packed.write_bytes((gzip if codec == "gz" else bz2).compress(text.encode()))
        assert TableReader(packed).read_all().num_rows >= 1


@pytest.mark.parametrize("suffix", ["csv", "tsv"])
def test_a_row_larger_than_the_csv_block_is_read_with_every_row_around_it_once(tmp_path, monkeypatch, suffix):
    import scorer.data.csvrows

    monkeypatch.setattr(scorer.data.csvrows, "BLOCK", 1 << 12)  # 4 KB blocks: the 20 KB row needs 64 KB ones
    texts = [f"row {i} says little" for i in range(600)] + ["word " * 4000] + [f"after {i}" for i in range(300)]
    path = tmp_path / f"in.{suffix}"
    quote = (lambda t: f'"{t}"') if suffix == "csv" else (lambda t: t)
    path.write_text("id" + ("," if suffix == "csv" else "\t") + "sentence\n"
                    + "".join(f"{i}{',' if suffix == 'csv' else chr(9)}{quote(t)}\n" for i, t in enumerate(texts)))
    windows = list(TableReader(path).batches(250))
    assert [w.num_rows for w in windows] == [250, 250, 250, 151]
    table = pa.concat_tables(windows)
    assert table.column("sentence").to_pylist() == texts
    assert table.column("id").to_pylist() == [str(i) for i in range(901)]
    monkeypatch.setattr(scorer.data.csvrows, "MAX_BLOCK", 1 << 14)  # a row that even the largest block cannot hold
    with pytest.raises(InputError, match="straddl"):
        list(TableReader(path).batches(250))


@pytest.mark.parametrize("suffix", ["csv", "csv.gz"])
def test_a_stray_quote_that_swallows_rows_is_named_and_the_file_refused(tmp_path, suffix):
    """A value opened by a stray quote runs, for pyarrow's reader as for Python's, to the next quote in the file:
    here lines 2-4 would be one row and two rows would be lost without an error."""
    import gzip

    content = ('sentence,label\n"Hello he said.,1\nThe dog barked.,0\nShe said "hi" to me.,1\n'
               + "".join(f"Row {i}.,0\n" for i in range(3000))).encode()
    path = tmp_path / f"in.{suffix}"
    path.write_bytes(gzip.compress(content) if suffix.endswith(".gz") else content)
    with pytest.raises(InputError, match=r"in.csv(.gz)? line 2: a quoted value there closes on line 4 and is not "
                                         r"followed by a comma or the line's end .*a stray quote"):
        list(TableReader(path).batches(100))


@pytest.mark.parametrize(("tail", "lost", "suffix"), [
    ('"Cut short.\n', "", "csv"),  # (its line end became part of the value: accepted before, with the text changed)
    ('"Cut short.\nMore.\nLast.\n', ", reading lines 3-5 as one value and losing their rows", "csv"),
    # A file cut short mid-value has no last line end: read before as if the quote were closed.
    ('"Cut short', "", "csv"),
    ('"Cut short', "", "csv.gz"),
    ('"Cut ""short"" ' + "x" * 70_000, "", "csv"),  # (a last line longer than the bytes kept of the file's end)
])
def test_a_quote_never_closed_is_named_as_such_and_the_file_refused(tmp_path, tail, lost, suffix):
    """A quote that opens a value and is never closed (a file cut short while it was copied, or a stray quote): the
    message said the value 'closes on line 5 and is not followed by a comma', and one swallowing only its own line
    end, or ending the file without a line end, was accepted."""
    import gzip

    path = tmp_path / f"in.{suffix}"
    content = ("sentence\nFine.\n" + tail).encode()
    path.write_bytes(gzip.compress(content) if suffix.endswith(".gz") else content)
    with pytest.raises(InputError) as raised:
        list(TableReader(path).batches(100))
    assert str(raised.value) == (f"{path} line 3: a quote opened there is never closed (the file ends inside it{lost})"
                                 ": a stray quote, or a file cut short; quote that value whole (doubling the quotes "
                                 "inside it) or remove the stray quote, or copy the file again")


@pytest.mark.parametrize("end", ["\n", ""])
def test_quoted_line_breaks_and_a_quote_that_closes_early_on_its_own_line_lose_no_row(tmp_path, end):
    path = tmp_path / "in.csv"
    path.write_text('sentence,label\nShe said "hi" to me.,1\n"abc" ,1\n"two\nlines, ""quoted""",0\nlast,1\n'
                    '"a, ""b""",0' + end)  # (quoted at the end, with no line end: whole)
    table = pa.concat_tables(TableReader(path).batches(100))
    assert table.column("sentence").to_pylist() == ['She said "hi" to me.', "abc ", 'two\nlines, "quoted"', "last",
                                                    'a, "b"']


def test_rows_that_repeat_the_header_line_are_found_across_blocks_and_counted(tmp_path):
    """A header line repeated (files joined with their headers) is found in any block, the first five rows named;
    a row equal to the header in some columns only, or a one-column file's row equal to its name, is data."""
    path = tmp_path / "in.csv"
    lines = ["id,sentence"] + [f"{i},row {i} of a file of ten MB read in 4 MiB blocks" for i in range(1, 200_001)]
    for at in (3, 50_000, 120_000, 150_000, 160_000, 170_000, 199_000):
        lines[at] = "id,sentence"
    lines[10] = "id,not the header"
    path.write_text("\n".join(lines) + "\n")
    reader = TableReader(path)
    table = pa.concat_tables(reader.batches(70_000))
    assert table.num_rows == 200_000 and reader.header_rows == ([3, 50_000, 120_000, 150_000, 160_000], 7)
    assert reader.repeated_header() == ("data row(s) 3, 50000, 120000, 150000, 160000 and 2 more repeat the header "
                                        "line (id,sentence): files joined with their headers (cat a.csv b.csv)?")
    excel = tmp_path / "excel.csv"  # (two of Excel's CSV files joined: each starts with a byte-order mark)
    excel.write_bytes(b"\xef\xbb\xbfid,sentence\n1,a cat\n" * 2)
    reader = TableReader(excel)
    assert pa.concat_tables(reader.batches(10)).num_rows == 3 and reader.header_rows == ([2], 1)
    single = tmp_path / "one.csv"
    single.write_text("word\ncat\nword\ndog\n")
    reader = TableReader(single)
    assert pa.concat_tables(reader.batches(10)).num_rows == 3 and reader.repeated_header() is None


@pytest.mark.parametrize(("name", "first", "how"), [
    ("in.csv", "sep=,", " (tail -n +2 in.csv > fixed-in.csv)"),
    ("in.csv", "SEP=;", " (tail -n +2 in.csv > fixed-in.csv)"),
    ("in.tsv", "sep=\t", " (tail -n +2 in.tsv > fixed-in.tsv)"),
    ("in.csv.gz", "sep=,", ""),
])
def test_excel_s_delimiter_line_is_named_for_what_it_is(tmp_path, name, first, how):
    """`sep=,` on line 1 (some exports write it for Excel) was taken as the header: "column 'sentence' not found;
    columns are 'sep=', ''"."""
    import gzip

    path = tmp_path / name
    content = f"{first}\nid,sentence\n1,The cat sat.\n".encode()
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    with pytest.raises(InputError) as raised:
        TableReader(path)
    assert str(raised.value) == (f"{path} line 1 is {first!r}, Excel's note of the delimiter, not a header line; "
                                 f"remove that line{how}")
    data = tmp_path / "data.csv"
    data.write_text("sep,sentence\nsep=,The cat sat.\n")  # (a column named sep, a value starting sep=: data)
    assert TableReader(data).columns == ["sep", "sentence"]


def test_a_ragged_row_after_a_huge_cell_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1," + "x" * 300_000 + "\n3,4,5\n")  # the cell is over Python's csv field limit
    with pytest.raises(InputError, match=r"line 3 \(expected 2 fields, found 3\)"):
        list(TableReader(path).batches(100))


def test_corrupt_parquet_and_missing_files_are_input_errors(tmp_path):
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        TableReader(corrupt)
    with pytest.raises(InputError, match="does not exist"):
        TableReader(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="unknown file type"):
        TableReader(tmp_path / "data.json")


def test_truncated_parquet_is_refused(tmp_path):
    good = write_parquet(tmp_path / "good.parquet", pa.table({"sentence": ["a b c"] * 1000}))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut\.parquet"):
        list(TableReader(cut).batches(100))


def test_a_damaged_row_group_is_named_with_its_rows(tmp_path):
    # a file that is whole but damaged inside (a bad disk, a broken copy): "check that the file is complete" would
    # mislead; say which rows cannot be read
    texts = [f"sentence number {i} of the file" for i in range(6000)]
    good = write_parquet(tmp_path / "good.parquet", pa.table({"sentence": texts}), row_group_size=1000)
    column = pq.read_metadata(good).row_group(3).column(0)
    data = bytearray(good.read_bytes())
    data[column.data_page_offset + 100:column.data_page_offset + column.total_compressed_size - 8] = \
        b"\xff" * (column.total_compressed_size - 108)
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(bytes(data))
    reader = TableReader(damaged)
    with pytest.raises(InputError, match=r"damaged\.parquet: row group 4 of 6 \(rows 3,001-4,000\) cannot be read "
                                         r"\(.+\): the file is damaged; write it again"):
        list(reader.batches(500))


def test_labelled_rows_need_text_and_label(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\nfine,1\n,0\n")
    with pytest.raises(InputError, match=r"train.csv row 2: column 'sentence' is empty"):
        read_labelled(path, "sentence", "label")
    path.write_text("sentence,label\nfine,1\nalso fine,\n")
    with pytest.raises(InputError, match=r"row 2: column 'label' has no label"):
        read_labelled(path, "sentence", "label")


def test_labelled_text_in_utf8_bytes_or_a_dictionary_is_text_and_other_bytes_name_their_row(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", pa.table({
        "sentence": pa.array([b"one", b"two"], pa.binary()).dictionary_encode(), "label": [0, 1]}))
    assert read_labelled(path, "sentence", "label").texts == ["one", "two"]
    path = write_parquet(tmp_path / "train.parquet", pa.table({
        "sentence": pa.array([b"one", b"caf\xe9"], pa.binary()), "label": [0, 1]}))
    with pytest.raises(InputError, match=r"train.parquet row 2: column 'sentence' is empty or not text"):
        read_labelled(path, "sentence", "label")


@pytest.mark.parametrize("end", ["\r", "\r\n", "\n"])
@pytest.mark.parametrize("suffix", ["csv", "tsv", "csv.gz"])
def test_lines_may_end_in_a_lone_cr_as_old_mac_and_some_excel_exports_write_them(tmp_path, end, suffix):
    """CR-only line ends read like LF and CR LF ones: the header (read by scorer, which failed with an internal
    error on a lone CR) and the rows (read by pyarrow); a line that is not UTF-8 is named by its number."""
    sep = "\t" if suffix == "tsv" else ","
    rows = [f"Row {i} is here.{sep}{i % 2}" for i in range(50)]
    text = end.join([f"sentence{sep}label", *rows]) + end
    path = tmp_path / f"in.{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    table = TableReader(path).read_all()
    assert table.column_names == ["sentence", "label"]
    assert table.column("sentence").to_pylist() == [f"Row {i} is here." for i in range(50)]
    bad = tmp_path / f"bad.{suffix}"
    broken = end.join([f"sentence{sep}label", rows[0], "caf\xe9" + sep + "1", rows[1]]) + end
    bad.write_bytes(gzip.compress(broken.encode("latin-1")) if suffix.endswith(".gz") else broken.encode("latin-1"))
    with pytest.raises(InputError, match=r"bad\.\S+ line 3: bytes that are not UTF-8"):
        TableReader(bad).read_all()


def test_a_header_with_an_open_quote_or_without_a_line_end_is_refused_in_one_line(tmp_path, monkeypatch):
    import scorer.data.csvlint

    path = tmp_path / "in.csv"
    path.write_bytes(b'"sentence,label\nA b.,1\n')
    with pytest.raises(InputError, match=r"in\.csv line 1 \(the header\): .*; fix the header"):
        TableReader(path)
    monkeypatch.setattr(scorer.data.csvlint, "_HEADER_LIMIT", 1 << 20)
    path.write_bytes(b"sentence" + b",x" * 1_000_000)
    with pytest.raises(InputError, match=r"in\.csv: no line end in its first 1 MiB, so no header line"):
        TableReader(path)


@pytest.mark.parametrize("first", ["gj04\t1\t\tThe dog chased the cat around.", "4\t0.5\tsome text"])
def test_a_file_without_a_header_line_is_told_so_not_offered_a_sentence_as_column_name(tmp_path, first):
    """CoLA's original files have no header (source, label, mark, sentence): their first row's values are not
    offered as column names; the file is said to lack a header, with what to add."""
    path = tmp_path / "raw.tsv"
    path.write_text(first + "\n" + first + "\n")
    reader = TableReader(path)
    with pytest.raises(InputError) as error:
        reader.require("sentence", "--text-column")
    said = str(error.value)
    assert said.startswith(f"column 'sentence' not found in {path}, whose first line looks like a row of data, not "
                           "a header (a column named ")
    assert f"add a header line naming its {len(first.split(chr(9)))} columns ('sentence' among them, or pass " \
           "--text-column with the name you give it)" in said
    header = tmp_path / "header.tsv"
    header.write_text("source\tlabel_2024\tnote\ttext\n" + first + "\n")  # (a real header: the usual advice)
    with pytest.raises(InputError, match="columns are source, label_2024, note, text; pass --text-column with one"):
        TableReader(header).require("sentence", "--text-column")


def test_a_pipe_or_a_device_is_named_as_such_not_as_missing_or_of_no_type(tmp_path, tiny_export):
    """`scorer run <(zcat day.csv.gz)` passes /dev/fd/N, a pipe: it was 'unknown file type', a FIFO named day.csv
    'does not exist'; scorer reads an input more than once, so a pipe cannot do."""
    import os

    from click.testing import CliRunner

    from scorer.cli import main

    fifo = tmp_path / "day.csv"
    os.mkfifo(fifo)
    read, write = os.pipe()
    try:
        for path in (fifo, f"/dev/fd/{read}", "/dev/null"):
            result = CliRunner().invoke(main, ["run", str(path), "--model", str(tiny_export), "-o",
                                               str(tmp_path / "out.parquet"), "--quiet"])
            assert result.exit_code == 3 and result.output == \
                f"error: {path} is a pipe or a device, not a file; scorer reads an input more than once (to resume " \
                "it, to see it did not change), so write it to a file first and pass that\n"
            with pytest.raises(InputError, match="is a pipe or a device, not a file"):
                read_labelled(path, "sentence", "label")
    finally:
        os.close(read)
        os.close(write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day.csv"]


def test_a_csv_files_rows_are_estimated_as_it_is_read_and_known_once_read(tmp_path):
    """A running summary and the log's progress lines give a CSV input's rows (and so the time left) as an estimate
    from the blocks read so far: the file's size over the bytes a block holds; exact once the file has been read,
    and for Parquet from its footer. A compressed file's from its compressed size times how much the bytes read so far
    grew decompressed (it said none, and so no time left, until it had been read: a night's one big .csv.gz)."""
    import gzip
    import random

    lines = "".join(f"{i},{'word ' * (i % 17 + 3)}\n" for i in range(300_000))
    content = "id,sentence\n" + lines
    path, packed = tmp_path / "in.csv", tmp_path / "in.csv.gz"
    path.write_text(content)
    # Text that compresses as text does (about 2x; the lines above 8.5x): the compressed bytes read are known to a
    # decompression chunk (64 KB), which is 6-13% of what the first window reads of a file that compresses 8.5x
    rng = random.Random(0)
    words = [f"{rng.getrandbits(40):x}" for _ in range(50_000)]
    packed.write_bytes(gzip.compress(("id,sentence\n" + "".join(
        f"{i},{' '.join(rng.choice(words) for _ in range(i % 7 + 2))}\n" for i in range(300_000))).encode(), 6))
    reader = TableReader(path)
    assert reader.rows_expected() == (None, False)  # (nothing read yet)
    windows = reader.batches(50_000)
    next(windows)
    estimate, exact = reader.rows_expected()
    assert not exact and abs(estimate - 300_000) < 300_000 * 0.05, estimate
    assert sum(w.num_rows for w in windows) == 250_000 and reader.rows_expected() == (300_000, True)
    compressed = TableReader(packed)
    assert compressed.rows_expected() == (None, False)
    windows = compressed.batches(50_000)
    next(windows)
    estimate, exact = compressed.rows_expected()
    assert not exact and abs(estimate - 300_000) < 300_000 * 0.05, estimate
    list(windows)
    assert compressed.rows_expected() == (300_000, True)
    parquet = write_parquet(tmp_path / "in.parquet", pa.table({"sentence": ["a", "b"]}))
    assert TableReader(parquet).rows_expected() == (2, True)


@pytest.mark.parametrize("suffix", ["csv", "tsv", "csv.gz"])
def test_a_csv_files_rows_are_exact_when_its_last_window_is_handed_on(tmp_path, monkeypatch, suffix):
    """The last window of a file whose rows fill its windows exactly was handed on before the reader had looked past
    the last block, so its rows were still an estimate then: a run's last progress line for that input said "of
    about" (flaky, by which thread got there first). The last block is now handed on once the end has been seen."""
    import gzip

    import scorer.data.csvrows

    monkeypatch.setattr(scorer.data.csvrows, "BLOCK", 1 << 12)  # (4 KB blocks: the file is read in many)
    separator = "\t" if suffix == "tsv" else ","
    content = f"id{separator}sentence\n" + "".join(f"{i}{separator}row {i} says a little more\n" for i in range(1_000))
    path = tmp_path / f"in.{suffix}"
    path.write_bytes(gzip.compress(content.encode()) if suffix.endswith(".gz") else content.encode())
    for skip in (0, 500):
        reader, rows = TableReader(path), skip
        for window in reader.batches(250, skip_rows=skip):
            rows += window.num_rows
            if rows == 1_000:  # (the last window, in hand: nothing after it has been asked for)
                assert reader.rows_expected() == (1_000, True)
        assert rows == 1_000
    header_only = tmp_path / f"empty.{suffix}"
    header = f"id{separator}sentence\n".encode()
    header_only.write_bytes(gzip.compress(header) if suffix.endswith(".gz") else header)
    reader = TableReader(header_only)
    assert list(reader.batches(250)) == [] and reader.rows_expected() == (0, True)


_CELLS = ["a", "b", " ", ",", '"', "\n", "\r\n", "é", "日本", "\U0001F642", "\t", "x y", "\\", "#", ";", "\u00a0", "0",
          "1.5", "NA", "null", "NaN", "true", "-"]


@pytest.mark.parametrize("seed", range(4))
def test_csv_files_pythons_csv_module_writes_read_back_cell_for_cell(tmp_path, seed):
    """Against Python's own CSV reader, on files its writer makes: quoted or not, CR LF or LF, embedded line breaks,
    quotes and separators, a last line with and without its end, compressed or not, read in small windows. Every
    row comes back, in order, each cell as written (strings never read as nulls, numbers or booleans)."""
    import csv
    import io
    import random

    rng = random.Random(seed)
    for trial in range(25):
        names = ["sentence", *(f"c{i}" for i in range(rng.randint(0, 3)))]
        rows = [["".join(rng.choice(_CELLS) for _ in range(rng.choice([0, 1, 2, 3, 5, 8]))) for _ in names]
                for _ in range(rng.randint(1, 40))]
        text = io.StringIO()
        writer = csv.writer(text, quoting=rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
                            lineterminator=rng.choice(["\n", "\r\n"]))
        writer.writerows([names, *rows])
        content = text.getvalue() if rng.random() < 0.7 else text.getvalue().rstrip("\r\n")
        path = tmp_path / f"t{trial}.csv{'.gz' if rng.random() < 0.2 else ''}"
        path.write_bytes(gzip.compress(content.encode()) if path.suffix == ".gz" else content.encode())
        expected = list(csv.reader(io.StringIO(content, newline="")))[1:]
        got = [[row[name] for name in names] for window in TableReader(path).batches(7) for row in window.to_pylist()]
        assert got == expected, (path, content)


@pytest.mark.parametrize("seed", range(2))
def test_tsv_files_read_back_line_for_line_as_split_on_tabs(tmp_path, seed):
    """A TSV file is read literally (IANA's format: no quoting, a quote is text): each line after the header, split
    on tabs, is a row, quotes and all; in a one-column file a blank line too (an empty value)."""
    import random

    rng = random.Random(seed)
    cells = [c for c in _CELLS if c not in ("\n", "\r\n", "\t")] + ['""', '"a"', "'"]
    for trial in range(25):
        names = ["sentence", *(f"c{i}" for i in range(rng.randint(0, 3)))]
        rows = [["".join(rng.choice(cells) for _ in range(rng.choice([0, 1, 2, 4]))) for _ in names]
                for _ in range(rng.randint(1, 30))]
        end = rng.choice(["\n", "\r\n"])
        path = tmp_path / f"t{trial}.tsv"
        path.write_bytes((end.join("\t".join(row) for row in [names, *rows]) + end).encode())
        got = [[row[name] for name in names] for window in TableReader(path).batches(5) for row in window.to_pylist()]
        assert got == rows, path.read_bytes()
