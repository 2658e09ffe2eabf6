"""The trade-off scatter leaves models collapsed to chance out, and says so."""

from experiments import lbgat_study


def test_tradeoff_points_moves_chance_level_models_into_the_note():
    rows = {
        "Vanilla AT": {"Clean": 80.3, "AA": 65.4, "PGD-20": 68.8},
        "BGAT": {"Clean": 9.7, "AA": 9.7, "PGD-20": 9.7},
        "LBGAT+ALP": {"Clean": 89.3, "AA": 6.4},     # weak, but not collapsed
        "TRADES (α=1)": {"Clean": 99.0},             # AA not run yet
        "edge": {"Clean": lbgat_study.CHANCE_CLEAN, "AA": 10.0},
    }
    shown, at_chance = lbgat_study.tradeoff_points(rows, "AA")
    assert shown == {"Vanilla AT": (80.3, 65.4), "LBGAT+ALP": (89.3, 6.4)}
    assert at_chance == {"BGAT": (9.7, 9.7), "edge": (15.0, 10.0)}
    shown, at_chance = lbgat_study.tradeoff_points(rows, "PGD-20")
    assert list(shown) == ["Vanilla AT"] and list(at_chance) == ["BGAT"]
    # Nothing above chance: all are plotted, none is hidden in the note.
    shown, at_chance = lbgat_study.tradeoff_points({"BGAT": rows["BGAT"]}, "AA")
    assert shown == {"BGAT": (9.7, 9.7)} and at_chance == {}
    note = lbgat_study.at_chance_note({"BGAT": (9.7, 9.7)})
    assert note.endswith("BGAT (9.7 / 9.7)") and "chance" in note
    assert lbgat_study.at_chance_note({}) == ""
