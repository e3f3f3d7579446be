"""CAMELS-US readers: against the real shipped files parsed independently with pandas, hand-written fixture
files, and property-based round trips / corruptions with hypothesis."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xaiscope.data.camels import (
    demo_basin, load_basin, load_basins, normalise_basin_id, read_basin_list, read_forcing, read_model_output,
    read_streamflow,
)
from xaiscope.data.errors import DataError, DataFileError, DataParameterError, UnknownBasinError

FORCING_REL = Path("basin_mean_forcing/daymet/01/01031500_lump_cida_forcing_leap.txt")
MODEL_REL = Path("model_output/flow_timeseries/daymet/01/01031500_05_model_output.txt")
CFS = 0.0283168  # ft3/s -> m3/s (USGS)

HEADERS = {
    "daymet": "Year Mnth Day Hr dayl(s) prcp(mm/day) srad(W/m2) swe(mm) tmax(C) tmin(C) vp(Pa)",
    "maurer": "Year Mnth Day Hr Dayl(s) PRCP(mm/day) SRAD(W/m2) SWE(mm) Tmax(C) Tmin(C) Vp(Pa)",
    "nldas": "Year Mnth Day Hr Dayl(s) PRCP(mm/day) SRAD(W/m2) SWE(mm) Tmax(C) Tmin(C) Vp(Pa)",
    "maurer_extended": "Year Mnth Day Hr dayl(s) prcp(mm/day) srad(W/m2) swe(mm) tmax(C) tmin(C) vp(Pa)",
}
FORCING_VARS = ["dayl", "prcp", "srad", "swe", "tmax", "tmin", "vp"]


def _pandas_forcing(path):
    """Independent parse of a CAMELS forcing file with pandas (3 header lines, then a table)."""
    df = pd.read_csv(path, skiprows=3, sep=r"\s+")
    df.columns = [c.split("(")[0].lower() for c in df.columns]
    time = pd.to_datetime(dict(year=df["year"], month=df["mnth"], day=df["day"]))
    return df, time


def _forcing_text(rows, header="daymet", sep="\t", lat=45.06, elev=318.0, area=771486538):
    """rows: (date, dayl, prcp, srad, swe, tmax, tmin, vp) tuples."""
    lines = [f"  {lat:.2f}", f" {elev:.2f}", f" {area}", HEADERS[header]]
    for d, *vals in rows:
        lines.append(f"{d.year} {d.month:02d} {d.day:02d} 12" + sep + sep.join(f"{v:.2f}" for v in vals))
    return "\n".join(lines) + "\n"


def _small_forcing(n=12, start="1999-12-25"):
    dates = pd.date_range(start, periods=n, freq="D")
    rng = np.random.default_rng(0)
    return [(d, 30000 + k, abs(rng.normal(3, 4)), 150 + k, 0.0, 5 + rng.normal(), -5 + rng.normal(), 400 + k)
            for k, d in enumerate(dates)]


# ------------------------------------------------------------------------------------- real files vs pandas
def test_read_forcing_real_file_matches_pandas(camels_root):
    path = camels_root / FORCING_REL
    ds = read_forcing(path)
    df, time = _pandas_forcing(path)
    np.testing.assert_array_equal(ds["time"].values, time.to_numpy().astype("datetime64[ns]"))
    for var in ("dayl", "prcp", "srad", "tmax", "tmin", "vp"):
        np.testing.assert_array_equal(ds[var].values, df[var].to_numpy(), err_msg=var)
        assert ds[var].attrs["units"] and ds[var].attrs["long_name"]
    np.testing.assert_allclose(ds["tmean"].values, (df["tmax"] + df["tmin"]).to_numpy() / 2)
    assert "swe" not in ds  # the forcing swe column is all zero: not exposed
    assert (df["swe"] == 0).all()
    assert ds.sizes["time"] == 12784 and str(ds.time.values[0])[:10] == "1980-01-01"
    header = path.read_text().splitlines()[:3]
    assert ds.attrs["latitude"] == float(header[0]) and ds.attrs["elevation"] == float(header[1])
    assert ds.attrs["area"] == pytest.approx(float(header[2]) / 1e6)
    assert ds.attrs["basin_id"] == "01031500" and ds.attrs["Conventions"] == "CF-1.8"
    assert ds["prcp"].attrs["standard_name"] == "lwe_precipitation_rate"
    assert ds["srad"].attrs["units"] == "W m-2" and ds["vp"].attrs["units"] == "Pa"
    files = json.loads(ds.attrs["files"])
    assert files[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_model_output_real_file_matches_pandas(camels_root):
    path = camels_root / MODEL_REL
    ds = read_model_output(path)
    df = pd.read_csv(path, sep=r"\s+")
    time = pd.to_datetime(dict(year=df["YR"], month=df["MNTH"], day=df["DY"])).to_numpy()
    np.testing.assert_array_equal(ds["time"].values, time.astype("datetime64[ns]"))
    for var, col in [("swe", "SWE"), ("q_benchmark", "MOD_RUN"), ("pet", "PET"), ("et", "ET"), ("tair", "TAIR"),
                     ("raim", "RAIM"), ("prcp", "PRCP")]:
        np.testing.assert_array_equal(ds[var].values, df[col].to_numpy(), err_msg=var)
    # OBS_RUN is exactly 0 on 18 days at the end (2014-11-27..2014-12-31): missing, so NaN; the rest unchanged
    zero = (df["OBS_RUN"] == 0).to_numpy()
    assert zero.sum() == 18 and time[zero].min() == np.datetime64("2014-11-27")
    assert np.isnan(ds["qobs"].values[zero]).all()
    np.testing.assert_array_equal(ds["qobs"].values[~zero], df["OBS_RUN"].to_numpy()[~zero])
    assert "18 exact-zero days" in ds["qobs"].attrs["comment"]
    assert ds["swe"].attrs["units"] == "mm" and ds["swe"].max() > 300


def _model_output_text(qobs, start="2000-01-01", swe=None):
    dates = pd.date_range(start, periods=len(qobs), freq="D")
    lines = ["YR MNTH DY HR SWE PRCP RAIM TAIR PET ET MOD_RUN OBS_RUN"]
    for k, (d, q) in enumerate(zip(dates, qobs)):
        s = 0.0 if swe is None else swe[k]
        lines.append(f"{d.year} {d.month:02d} {d.day:02d} 12 {s:11.7f} {1.5:11.7f} {1.5:11.7f} {-3.25:11.7f} "
                     f"{0.5:11.7f} {0.4:11.7f} {q + 0.1:11.7f} {q:11.7f}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("qobs, nan_at", [
    ([1.0] * 5 + [0.0] * 10 + [2.0] * 5, []),                        # dry spell inside the record: kept
    ([1.0] * 10 + [0.0] * 4, []),                                      # too short a trailing run: kept
    ([1.0] * 10 + [0.0] * 6, list(range(10, 16))),                      # trailing run of 6 zeros: missing
    ([1.0] * 5 + [0.0] * 3 + [2.0] * 4 + [0.0] * 2, [5, 6, 7, 12, 13]),  # zeros interleaved, ending the record
    ([1.0, -999.0, 2.0, 3.0], [1]),                                    # -999: missing
])
def test_model_output_missing_observation_rules(tmp_path, qobs, nan_at):
    path = tmp_path / "01234567_05_model_output.txt"
    path.write_text(_model_output_text(qobs))
    ds = read_model_output(path)
    expected = np.asarray(qobs, dtype=float)
    expected[nan_at] = np.nan
    np.testing.assert_array_equal(ds["qobs"].values, expected)
    assert ds.attrs["basin_id"] == "01234567"


def test_read_streamflow_handwritten_file(tmp_path):
    text = ("01031500 1980 01 01   655.00 A\n"
            "01031500 1980 01 02   640.00 A:e\n"
            "01031500 1980 01 03  -999.00 M\n"
            "01031500 1980 01 05   600.00 A\n")   # 1980-01-04 is absent
    path = tmp_path / "01031500_streamflow_qc.txt"
    path.write_text(text)
    ds = read_streamflow(path, area_km2=769.05)
    ref = pd.read_csv(path, sep=r"\s+", header=None, names=["gauge", "y", "m", "d", "q", "flag"], dtype={0: str})
    q = ref["q"].where(ref["q"] >= 0) * CFS * 86400 / 769.05e6 * 1e3
    expected = pd.Series(q.to_numpy(), index=pd.to_datetime(dict(year=ref.y, month=ref.m, day=ref.d)))
    expected = expected.reindex(pd.date_range("1980-01-01", "1980-01-05"))
    np.testing.assert_allclose(ds["qobs"].values, expected.to_numpy(), rtol=1e-12)
    assert list(ds["qobs_flag"].values) == ["A", "A:e", "M", "M", "A"]
    assert ds.attrs["basin_id"] == "01031500" and ds["qobs"].attrs["units"] == "mm/day"
    with pytest.raises(DataParameterError, match="area_km2"):
        read_streamflow(path, area_km2=-1)


@pytest.mark.parametrize("header", sorted(HEADERS))
@pytest.mark.parametrize("sep", ["\t", " ", "   "])
def test_forcing_header_variants(tmp_path, header, sep):
    rows = _small_forcing()
    path = tmp_path / f"01234567_lump_{header}_forcing_leap.txt"
    path.write_text(_forcing_text(rows, header=header, sep=sep))
    ds = read_forcing(path)
    df, _ = _pandas_forcing(path)
    for var in ("dayl", "prcp", "srad", "tmax", "tmin", "vp"):
        np.testing.assert_array_equal(ds[var].values, df[var].to_numpy())
    assert ds.attrs["basin_id"] == "01234567" and "swe" not in ds


def test_forcing_columns_in_another_order(tmp_path):
    rows = _small_forcing()
    names = ["Year", "Mnth", "Day", "Hr", "vp(Pa)", "tmin(C)", "tmax(C)", "prcp(mm/day)", "srad(W/m2)", "dayl(s)"]
    lines = ["45.0", "100", "1000000", " ".join(names)]
    for d, dayl, prcp, srad, _swe, tmax, tmin, vp in rows:
        lines.append(f"{d.year} {d.month} {d.day} 12 {vp:.2f} {tmin:.2f} {tmax:.2f} {prcp:.2f} {srad:.2f} {dayl:.2f}")
    path = tmp_path / "forcing.txt"
    path.write_text("\n".join(lines))
    ds = read_forcing(path)
    np.testing.assert_allclose(ds["vp"].values, [round(r[7], 2) for r in rows])
    np.testing.assert_allclose(ds["prcp"].values, [round(r[2], 2) for r in rows])
    assert "basin_id" not in ds.attrs and ds.attrs["area"] == 1.0


# ------------------------------------------------------------------------------------------- load_basin
def test_load_basin_demo(camels_root, demo_ds):
    ds = demo_ds
    model = pd.read_csv(camels_root / MODEL_REL, sep=r"\s+")
    mtime = pd.to_datetime(dict(year=model["YR"], month=model["MNTH"], day=model["DY"]))
    assert {"prcp", "srad", "tmax", "tmin", "vp", "dayl", "tmean", "qobs", "swe", "q_benchmark"} <= set(ds)
    assert ds.sizes["time"] == 12784  # on the forcing's time axis
    before = ds.time < np.datetime64(mtime.iloc[0])
    assert before.sum() == 274 and bool(ds["qobs"].where(before).isnull().all())
    assert bool(ds["swe"].where(before).isnull().all())
    obs = pd.Series(model["OBS_RUN"].to_numpy(), index=mtime).where(lambda s: s > 0)
    sel = ds["qobs"].sel(time=obs.index)
    np.testing.assert_array_equal(sel.values, obs.to_numpy())
    np.testing.assert_array_equal(ds["q_benchmark"].sel(time=mtime.to_numpy()).values, model["MOD_RUN"].to_numpy())
    assert ds.attrs["basin_id"] == "01031500" and ds.attrs["basin_name"].startswith("Piscataquis")
    files = json.loads(ds.attrs["files"])
    assert len(files) == 2
    for f in files:
        assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
    for key in ("latitude", "elevation", "area", "source", "Conventions"):
        assert key in ds.attrs


def test_demo_basin_equals_load_basin_and_forcing_path(camels_root, demo_ds):
    by_folder = load_basin(camels_root, "01031500")
    by_file = load_basin(camels_root / FORCING_REL)   # model output is not next to it: forcing only
    xr.testing.assert_identical(by_folder.drop_attrs(), demo_ds.drop_attrs())
    xr.testing.assert_equal(by_file[["prcp", "tmax", "vp"]], demo_ds[["prcp", "tmax", "vp"]])
    assert "q_benchmark" not in by_file and bool(by_file["qobs"].isnull().all())
    assert "no streamflow file" in by_file["qobs"].attrs["comment"]


def test_demo_basin_netcdf_round_trip(tmp_path, demo_ds):
    out = tmp_path / "basin.nc"
    demo_ds.to_netcdf(out)
    back = xr.load_dataset(out)
    xr.testing.assert_identical(back, demo_ds)


def _camels_tree(tmp_path, camels_root, streamflow=None, extra_basin=False):
    root = tmp_path / "basin_dataset_public_v1p2"
    for rel in (FORCING_REL, MODEL_REL):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(camels_root / rel, root / rel)
    if streamflow is not None:
        folder = root / "usgs_streamflow" / "01"
        folder.mkdir(parents=True)
        (folder / "01031500_streamflow_qc.txt").write_text(streamflow)
    if extra_basin:  # a second basin in another HUC folder: 1990-1992 only, no model output
        lines = (camels_root / FORCING_REL).read_text().splitlines()
        body = [ln for ln in lines[4:] if ln[:4] in ("1990", "1991", "1992")]
        folder = root / "basin_mean_forcing" / "daymet" / "02"
        folder.mkdir(parents=True)
        (folder / "02013500_lump_cida_forcing_leap.txt").write_text("\n".join(["44.00", "200.00", "500000000",
                                                                             lines[3], *body]) + "\n")
    return root


def test_load_basin_prefers_usgs_streamflow(tmp_path, camels_root):
    days = pd.date_range("1990-01-01", "1990-03-31")
    rng = np.random.default_rng(3)
    q = rng.gamma(2.0, 300.0, len(days))
    q[10] = -999.0
    text = "".join(f"01031500 {d.year} {d.month:02d} {d.day:02d} {v:9.2f} {'M' if v < 0 else 'A'}\n"
                   for d, v in zip(days, q))
    root = _camels_tree(tmp_path, camels_root, streamflow=text)
    ds = load_basin(tmp_path, "01031500")  # the parent of basin_dataset_public_v1p2 works too
    area = float((camels_root / FORCING_REL).read_text().splitlines()[2]) / 1e6
    expected = np.where(np.round(q, 2) < 0, np.nan, np.round(q, 2)) * CFS * 86400 / (area * 1e6) * 1000
    np.testing.assert_allclose(ds["qobs"].sel(time=days).values, expected, rtol=1e-12)
    assert int(ds["qobs"].notnull().sum()) == len(days) - 1   # NaN outside the streamflow record
    assert ds["qobs_flag"].sel(time="1990-01-11").item() == "M"
    assert len(json.loads(ds.attrs["files"])) == 3
    assert (root / "usgs_streamflow").is_dir()


def test_load_basins_list_and_file(tmp_path, camels_root):
    root = _camels_tree(tmp_path, camels_root, extra_basin=True)
    listing = tmp_path / "basins.txt"
    listing.write_text("# two basins\n02013500\n01031500\n\n")
    assert read_basin_list(listing) == ["02013500", "01031500"]
    ds = load_basins(root, listing)
    assert list(ds["basin"].values) == ["02013500", "01031500"]
    assert ds.sizes["time"] == 12784  # outer join on time
    small = ds.sel(basin="02013500")
    assert int(small["prcp"].notnull().sum()) == 365 * 3 + 1 and bool(small["swe"].isnull().all())
    single = load_basin(root, "01031500")
    member = ds.sel(basin="01031500", drop=True)
    xr.testing.assert_equal(member[["prcp", "qobs", "swe"]], single[["prcp", "qobs", "swe"]])
    np.testing.assert_allclose(ds["area"].values, [500.0, 771.486538])
    assert ds["prcp"].attrs["units"] == "mm/day"
    by_ids = load_basins(root, ["02013500", 1031500])   # an int id gets its leading zero back
    xr.testing.assert_identical(by_ids.drop_attrs(), ds.drop_attrs())


def test_basin_id_normalisation():
    assert normalise_basin_id("01031500") == "01031500"
    assert normalise_basin_id(1031500) == "01031500"
    for bad in ("abc", "123456789", 1.5, None, True, "0103 1500"):
        with pytest.raises(DataParameterError, match="basin_id"):
            normalise_basin_id(bad)


# ------------------------------------------------------------------------------------------------ errors
def test_unknown_basin_and_bad_folders(tmp_path, camels_root):
    with pytest.raises(UnknownBasinError, match=r"'01013500'.*1 basins are there \(01031500\)"):
        load_basin(camels_root, "01013500")
    with pytest.raises(DataFileError, match="not a CAMELS-US folder"):
        load_basin(tmp_path, "01031500")
    with pytest.raises(DataFileError, match="folder not found"):
        load_basin(tmp_path / "nope", "01031500")
    with pytest.raises(DataParameterError, match="available forcing sources: daymet"):
        load_basin(camels_root, "01031500", forcing="maurer")
    with pytest.raises(DataParameterError, match="basin_id"):
        load_basin(camels_root, "1031-500")
    with pytest.raises(DataFileError, match="not an 8-digit basin id"):
        bad = tmp_path / "list.txt"
        bad.write_text("01031500\nfoo\n")
        load_basins(camels_root, bad)
    with pytest.raises(DataParameterError, match="repeats 01031500"):
        load_basins(camels_root, ["01031500", "01031500"])


def _mutate(text, how):
    lines = text.splitlines()
    if how == "truncated":
        return text[: text.rindex("\t", 0, len(text) - 1)]
    if how == "header_only":
        return "\n".join(lines[:4])
    if how == "wrong_columns":
        lines[3] = lines[3].replace("tmax(C)", "tmean(C)")
    elif how == "non_numeric":
        lines[7] = "\t".join(lines[7].split("\t")[:1] + ["abc"] + lines[7].split("\t")[2:])
    elif how == "out_of_order":
        lines[6], lines[7] = lines[7], lines[6]
    elif how == "duplicated":
        lines.insert(7, lines[7])
    elif how == "bad_latitude":
        lines[0] = "north"
    elif how == "bad_date":
        lines[6] = "1999 02 30 12" + lines[6][13:]
    elif how == "wrong_unit":
        lines[3] = lines[3].replace("vp(Pa)", "vp(hPa)")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("how, message", [
    ("truncated", r"line 16 has \d+ values .* truncated"),
    ("header_only", "only 4 lines"),
    ("wrong_columns", "lacks tmax"),
    ("non_numeric", "'abc' is not a number"),
    ("out_of_order", "comes before the date on line 7"),
    ("duplicated", "repeats the date on line 8"),
    ("bad_latitude", "line 1 should hold the basin latitude"),
    ("bad_date", "not a calendar date"),
    ("wrong_unit", "'hPa'"),
])
def test_forcing_file_errors_name_file_and_problem(tmp_path, how, message):
    path = tmp_path / "01234567_lump_cida_forcing_leap.txt"
    path.write_text(_mutate(_forcing_text(_small_forcing()), how))
    with pytest.raises(DataFileError, match=message) as info:
        read_forcing(path)
    assert str(path) in str(info.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(DataFileError, match="forcing file not found"):
        read_forcing(tmp_path / "nope.txt")
    with pytest.raises(DataFileError, match="folder"):
        read_forcing(tmp_path)
    blob = tmp_path / "blob.txt"
    blob.write_bytes(bytes(range(256)))
    for reader in (read_forcing, read_model_output, lambda p: read_streamflow(p, 10.0)):
        with pytest.raises(DataFileError, match="not a text file"):
            reader(blob)


def test_streamflow_and_model_output_errors(tmp_path):
    flow = tmp_path / "01031500_streamflow_qc.txt"
    flow.write_text("01031500 1980 01 01 5.0 A\n01031501 1980 01 02 5.0 A\n")
    with pytest.raises(DataFileError, match="several gauge ids"):
        read_streamflow(flow, 10.0)
    flow.write_text("01031500 1980 01 01 5.0 A\n01031500 1980 01 02 5.0\n")
    with pytest.raises(DataFileError, match="line 2 has 5 values"):
        read_streamflow(flow, 10.0)
    model = tmp_path / "01031500_05_model_output.txt"
    model.write_text("YR MNTH DY HR SWE PRCP RAIM TAIR PET ET OBS_RUN\n1980 1 1 12 0 0 0 0 0 0 0\n")
    with pytest.raises(DataFileError, match="lacks MOD_RUN"):
        read_model_output(model)


# ------------------------------------------------------------------------------------ property-based tests
_value = st.floats(min_value=-50, max_value=5000, allow_nan=False).map(lambda v: round(v, 2))


@st.composite
def forcing_tables(draw):
    n = draw(st.integers(1, 25))
    start = draw(st.dates(min_value=pd.Timestamp("1950-01-01").date(), max_value=pd.Timestamp("2030-01-01").date()))
    dates = pd.date_range(start, periods=n, freq="D")
    rows = [(d, *draw(st.lists(_value, min_size=7, max_size=7))) for d in dates]
    header = draw(st.sampled_from(sorted(HEADERS)))
    sep = draw(st.sampled_from(["\t", " ", "  "]))
    lat = draw(st.floats(-90, 90).map(lambda v: round(v, 2)))
    return rows, header, sep, lat


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=forcing_tables())
def test_forcing_round_trip(tmp_path, table):
    rows, header, sep, lat = table
    path = tmp_path / "01234567_lump_cida_forcing_leap.txt"
    path.write_text(_forcing_text(rows, header=header, sep=sep, lat=lat))
    ds = read_forcing(path)
    expected = np.array([r[1:] for r in rows], dtype=float)
    for k, var in enumerate(FORCING_VARS):
        if var != "swe":
            np.testing.assert_allclose(ds[var].values, expected[:, k], rtol=0, atol=1e-9)
    assert list(ds["time"].values) == [np.datetime64(r[0], "ns") for r in rows]
    assert ds.attrs["latitude"] == pytest.approx(lat)


def _corrupt(data, text):
    """Apply 1-3 random edits (delete, insert, replace, truncate, swap/duplicate lines) to text."""
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["delete", "insert", "replace", "truncate", "swap", "duplicate"]))
        if not text:
            break
        i = data.draw(st.integers(0, len(text) - 1))
        if how == "delete":
            j = data.draw(st.integers(i, min(len(text), i + 20)))
            text = text[:i] + text[j:]
        elif how == "insert":
            text = text[:i] + data.draw(st.text(max_size=8)) + text[i:]
        elif how == "replace":
            text = text[:i] + data.draw(st.sampled_from(list("0123456789-.eE \t\nxNa9+"))) + text[i + 1:]
        elif how == "truncate":
            text = text[:i]
        else:
            lines = text.split("\n")
            a = data.draw(st.integers(0, len(lines) - 1))
            b = data.draw(st.integers(0, len(lines) - 1))
            if how == "swap":
                lines[a], lines[b] = lines[b], lines[a]
            else:
                lines.insert(a, lines[b])
            text = "\n".join(lines)
    return text


def _only_data_errors(reader, path):
    try:
        out = reader(path)
    except DataError as err:
        assert str(err)
        return
    assert isinstance(out, xr.Dataset)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_files_raise_only_data_errors(tmp_path, data):
    kind = data.draw(st.sampled_from(["forcing", "model", "flow"]))
    if kind == "forcing":
        text, reader = _forcing_text(_small_forcing(8)), read_forcing
    elif kind == "model":
        text, reader = _model_output_text([1.0, 0.5, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]), read_model_output
    else:
        text = "".join(f"01031500 2000 01 {d:02d} {100.0 * d:8.2f} A\n" for d in range(1, 9))
        reader = lambda p: read_streamflow(p, 123.4)  # noqa: E731
    path = tmp_path / f"01234567_{kind}.txt"
    path.write_bytes(_corrupt(data, text).encode("utf-8", errors="surrogatepass"))
    _only_data_errors(reader, path)
