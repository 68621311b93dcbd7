"""benchmarks/slide_memory.py --quick: tissue slides segmented with glass skipped, a row each, and the scaling lines."""

import pytest
from benchmark_scripts import load_script, markdown_table


@pytest.mark.slow
def test_quick_mode_measures_tissue_slides_with_and_without_the_mask(capsys):
    assert load_script("slide_memory").main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = markdown_table(out, "slide")
    assert [(row["slide"], row["tissue mask"]) for row in rows] == [("768²", "on"), ("768²", "off"), ("1536²", "on")]
    for row in rows:
        assert "error" not in row or not row["error"], row
        assert float(row["seconds"]) > 0 and int(row["patches"]) > 0
        assert 100 < float(row["peak RssAnon MB"]) < 2000
    on, off, larger = rows
    assert 20 < float(on["tissue %"]) < 40 and off["tissue %"] == ""
    assert int(on["glass patches"]) > 0 and int(off["glass patches"]) == 0
    assert int(on["patches"]) + int(on["glass patches"]) == int(off["patches"])  # every patch is one or the other
    assert int(larger["glass patches"]) > int(on["glass patches"])
    assert "peak RssAnon" in out and "for 4x the area" in out and "the tissue and" in out
