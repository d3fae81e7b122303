import json

import pytest

from vggnet import PARAMETER_COUNTS
from vggnet.summary import format_summary, summarize, totals


def test_vgg16_walkthrough_at_224():
    rows = {r.name: r for r in summarize("D")}
    assert rows["conv1_1"].output_shape == (224, 224, 64) and rows["conv1_1"].weights == 1728
    assert rows["conv1_1"].memory_bytes == 224 * 224 * 64 * 4
    assert rows["pool5"].output_shape == (7, 7, 512)
    assert rows["conv5_3"].output_shape == (14, 14, 512)
    assert rows["fc6"].weights == 102_760_448 and rows["fc7"].weights == 16_777_216
    t = totals(list(rows.values()))
    assert t["params"] == 138_357_544
    assert round(t["macs"] / 1e9, 1) == 15.5


@pytest.mark.parametrize("config", ["A", "A-LRN", "B", "C", "D", "E"])
def test_totals_match_table2(config):
    assert totals(summarize(config))["params"] == PARAMETER_COUNTS[config]


def test_receptive_fields_of_stacked_3x3():
    rows = {r.name: r for r in summarize("D")}
    assert rows["conv1_1"].receptive_field == 3
    assert rows["conv1_2"].receptive_field == 5       # two 3x3 see 5x5 (section 2.3)
    # three 3x3 convs of block 3 at stride 4: 7x7 in pool2's pixels
    assert (rows["conv3_3"].receptive_field - rows["pool2"].receptive_field) // rows["pool2"].stride == 6
    assert rows["pool5"].receptive_field == 212 and rows["pool5"].stride == 32


def test_bn_and_other_inputs():
    rows = summarize("D", batch_norm=True, input_size=(32, 32), head="cifar", num_classes=10)
    by_name = {r.name: r for r in rows}
    assert by_name["conv1_1"].biases == 64 * 3       # bias, BN gamma and beta
    assert by_name["pool5"].output_shape == (1, 1, 512)
    rows = summarize("D", input_size=(256, 320), head="dense")
    assert {r.name: r for r in rows}["fc8"].output_shape == (2, 4, 1000)
    with pytest.raises(ValueError, match="at least 224 px"):
        summarize("D", input_size=(200, 200), head="dense")


def test_formats():
    rows = summarize("A")
    table = format_summary(rows, "table")
    assert "conv1_1" in table and "132,863,336" in table and "GMACs" in table
    data = json.loads(format_summary(rows, "json"))
    assert data["totals"]["params"] == 132_863_336 and data["layers"][0]["name"] == "conv1_1"
    csv_text = format_summary(rows, "csv").splitlines()
    assert csv_text[0].startswith("layer,") and csv_text[-1].split(",")[6] == "132863336"
    with pytest.raises(ValueError, match="unknown format"):
        format_summary(rows, "xml")
