"""Fuzzing the readers: whatever bytes a file holds, only the project's own errors come out.

CAMELS-US forcing / streamflow / SAC-SMA model output text (random bytes, random text, mutated real files,
truncated real files), NetCDF (random bytes, truncated real files, small files with wrong dimensions, missing
coordinates, strings instead of numbers) and checkpoint manifests (random JSON, mutated real manifests): every
failure must be an :class:`~xaiscope.core.errors.XaiscopeError` (``DataError`` and ``CheckpointError`` are
subclasses) with a message. Runs are seed-deterministic (``derandomize=True``) and short (60–100 examples).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from xaiscope.assets import ASSETS
from xaiscope.core.errors import CheckpointError, XaiscopeError
from xaiscope.data.errors import DataError, DataFileError

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
FEW = settings(FUZZ, max_examples=25)

FORCING = ASSETS / "camels_us" / "basin_mean_forcing" / "daymet" / "01" / "01031500_lump_cida_forcing_leap.txt"
MODEL_OUTPUT = ASSETS / "camels_us" / "model_output" / "flow_timeseries" / "daymet" / "01" / \
    "01031500_05_model_output.txt"
ERSST = ASSETS / "ersst" / "anom_detrend_ersstv5_198001-201812_Ham-LR.nc"
DEMO_CKPT = ASSETS / "checkpoints" / "hydro_01031500"


class Bases(dict):
    """Fixture contents with a short repr (hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"<{len(self)} fuzz bases: {', '.join(map(str, self))}>"


def only_project_errors(fn, *args, **kwargs):
    """Call ``fn``; a project error is fine (it must carry a message), anything else fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    except XaiscopeError as err:
        assert str(err).strip(), f"{type(err).__name__} without a message"
        return err


def test_error_hierarchy():
    """Data errors and core errors share one root, so `except XaiscopeError` catches every user error."""
    from xaiscope.core import errors as core_errors
    from xaiscope.data import errors as data_errors

    assert core_errors.XaiscopeError is data_errors.XaiscopeError
    for cls in (DataError, DataFileError, data_errors.UnknownBasinError, data_errors.DataParameterError,
                CheckpointError, core_errors.UnknownModelError, core_errors.PathNotAllowedError):
        assert issubclass(cls, XaiscopeError), cls
    assert issubclass(DataError, ValueError)  # kept: callers that catch ValueError still work


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ================================================================================ CAMELS text readers
def _streamflow_text(n=300) -> str:
    """A USGS streamflow file in the CAMELS layout (gauge year month day Q flag) for the fuzz base."""
    days = pd.date_range("1980-10-01", periods=n, freq="D")
    q = np.round(200 + 150 * np.sin(np.arange(n) / 20.0), 2)
    flags = np.where(np.arange(n) % 50 == 0, "A:e", "A")
    return "".join(f"01031500 {d.year} {d.month:02d} {d.day:02d} {v:10.2f} {f}\n" for d, v, f in zip(days, q, flags))


def _head(path: Path, n_lines: int) -> str:
    with open(path, encoding="utf-8") as fh:
        return "".join(next(fh) for _ in range(n_lines))


@pytest.fixture(scope="module")
def camels_bases():
    return Bases({
        "forcing": _head(FORCING, 4 + 400),
        "streamflow": _streamflow_text(),
        "model_output": _head(MODEL_OUTPUT, 1 + 400),
    })


def _read(kind: str, path: Path):
    from xaiscope.data import camels

    if kind == "forcing":
        return camels.read_forcing(path)
    if kind == "streamflow":
        return camels.read_streamflow(path, 766.53)
    return camels.read_model_output(path)


_NAMES = {"forcing": "01031500_lump_cida_forcing_leap.txt", "streamflow": "01031500_streamflow_qc.txt",
          "model_output": "01031500_05_model_output.txt"}
KINDS = st.sampled_from(sorted(_NAMES))


def _write(work: Path, kind: str, payload: bytes) -> Path:
    path = work / _NAMES[kind]
    path.write_bytes(payload)
    return path


def test_camels_bases_are_readable(work, camels_bases):
    """The un-mutated bases read fine (so the fuzz tests below start from valid files)."""
    for kind, text in camels_bases.items():
        ds = _read(kind, _write(work, kind, text.encode()))
        assert ds.sizes["time"] >= 300


@FUZZ
@given(kind=KINDS, payload=st.binary(max_size=3000))
def test_camels_random_bytes(work, kind, payload):
    only_project_errors(_read, kind, _write(work, kind, payload))


@FUZZ
@given(kind=KINDS, text=st.text(max_size=2000))
def test_camels_random_text(work, kind, text):
    only_project_errors(_read, kind, _write(work, kind, text.encode("utf-8", "surrogatepass")))


TOKENS = st.one_of(
    st.sampled_from(["", " ", "\t", "nan", "NaN", "inf", "-inf", "1e309", "-999", "-999.00", "0", "-1", "13", "32",
                     "0.5", "1980", "2300", "99999999999999999999", "abc", "Year", "Mnth", "Day", "prcp(mm/day)",
                     "PRCP(in)", "tmax(K)", "YR", "OBS_RUN", "MOD_RUN", "A", "M", "٣", "１２", "1_0", "0x10",
                     "1,5", "+", "-", "e", "\u00a0", "\r", "\x0b", "\x0c", "\x1c", "\u2028"]),
    st.text(max_size=12),
)


@st.composite
def mutated(draw, base: str):
    """``base`` with a few line- and token-level edits, often in the header."""
    lines = base.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            lines = [draw(TOKENS) + "\n"]
        header = draw(st.booleans())
        k = draw(st.integers(0, min(len(lines) - 1, 5) if header else len(lines) - 1))
        op = draw(st.sampled_from(["token", "token", "line", "delete", "insert", "duplicate", "swap", "cut"]))
        if op == "token":
            parts = lines[k].split(" ") if " " in lines[k] else lines[k].split("\t")
            j = draw(st.integers(0, max(len(parts) - 1, 0)))
            parts[j] = draw(TOKENS)
            lines[k] = " ".join(parts)
            if not lines[k].endswith("\n"):
                lines[k] += "\n"
        elif op == "line":
            lines[k] = draw(TOKENS) + "\n"
        elif op == "delete":
            del lines[k]
        elif op == "insert":
            lines.insert(k, " ".join(draw(st.lists(TOKENS, max_size=12))) + "\n")
        elif op == "duplicate":
            lines.insert(k, lines[k])
        elif op == "swap":
            k2 = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[k2] = lines[k2], lines[k]
        else:  # cut a line short
            lines[k] = lines[k][: draw(st.integers(0, len(lines[k])))]
    return "".join(lines)


@FUZZ
@given(data=st.data(), kind=KINDS)
def test_camels_mutated_real_files(work, camels_bases, data, kind):
    text = data.draw(mutated(camels_bases[kind]))
    only_project_errors(_read, kind, _write(work, kind, text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(kind=KINDS, fraction=st.floats(0, 1))
def test_camels_truncated_files(work, camels_bases, kind, fraction):
    raw = camels_bases[kind].encode()
    only_project_errors(_read, kind, _write(work, kind, raw[: int(len(raw) * fraction)]))


@FEW
@given(cut=st.integers(0, FORCING.stat().st_size))
def test_camels_truncated_full_forcing_file(work, cut):
    with open(FORCING, "rb") as fh:
        raw = fh.read(cut)
    only_project_errors(_read, "forcing", _write(work, "forcing", raw))


# ================================================================================ NetCDF readers
def _nc_readers():
    from xaiscope.core.hydro import open_basin_data
    from xaiscope.data import sensitivity, sst

    return {
        "read_sst": lambda p: sst.read_sst(p),
        "read_sst_anomaly": lambda p: sst.read_sst(p, anomaly=True, repair_quirk=False),
        "read_extra": lambda p: sst.read_extra(p),
        "read_sensitivity": lambda p: sensitivity.read_sensitivity(p, units="1"),
        "read_sensitivity_regrid": lambda p: sensitivity.read_sensitivity(
            p, lat=np.arange(-10.0, 11.0, 5.0), lon=np.arange(150.0, 260.0, 10.0)),
        "land_mask_from_landsea": lambda p: sst.land_mask_from_landsea(
            p, np.arange(-10.0, 11.0, 5.0), np.arange(150.0, 260.0, 10.0)),
        "open_basin_data": lambda p: open_basin_data(p),
    }


NC_READERS = st.sampled_from(sorted(_nc_readers()))


def _read_nc(name: str, path: Path):
    return _nc_readers()[name](path)


@pytest.fixture(scope="module")
def nc_bases(work):
    """A real SST anomaly file cut to 12 months of the tropical Pacific, as NetCDF-4 and NetCDF-3 bytes."""
    with xr.open_dataset(ERSST) as ds:
        small = ds.isel(time=slice(0, 12)).load()
    lat = next(c for c in small.coords if "lat" in str(c).lower())
    lon = next(c for c in small.coords if "lon" in str(c).lower())
    small = small.sel({lat: slice(-20, 20) if small[lat][0] < small[lat][-1] else slice(20, -20),
                       lon: slice(140, 270)})
    out = Bases()
    for fmt in ("NETCDF4", "NETCDF3_64BIT"):
        path = work / f"base_{fmt}.nc"
        small.to_netcdf(path, format=fmt)
        out[fmt] = path.read_bytes()
    return out


def test_nc_bases_are_readable(work, nc_bases):
    from xaiscope.data.sst import read_sst

    for fmt, raw in nc_bases.items():
        path = work / "base.nc"
        path.write_bytes(raw)
        ds = read_sst(path, anomaly=True)
        assert ds.sizes["time"] == 12 and ds.sizes["lat"] > 3


MAGIC = st.sampled_from([b"", b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n", b"\x89HDF\r\n\x1a\n\x00\x00"])


@FUZZ
@given(reader=NC_READERS, magic=MAGIC, payload=st.binary(max_size=2000))
def test_netcdf_random_bytes(work, reader, magic, payload):
    path = work / "random.nc"
    path.write_bytes(magic + payload)
    only_project_errors(_read_nc, reader, path)


@FUZZ
@given(reader=NC_READERS, fmt=st.sampled_from(["NETCDF4", "NETCDF3_64BIT"]), fraction=st.floats(0, 1),
       flip=st.one_of(st.none(), st.tuples(st.floats(0, 1), st.integers(1, 255))))
def test_netcdf_truncated_or_corrupted_real_files(work, nc_bases, reader, fmt, fraction, flip):
    raw = bytearray(nc_bases[fmt][: int(len(nc_bases[fmt]) * fraction)])
    if flip is not None and raw:
        raw[int(flip[0] * (len(raw) - 1))] ^= flip[1]
    path = work / "truncated.nc"
    path.write_bytes(bytes(raw))
    only_project_errors(_read_nc, reader, path)


DIM_NAMES = ["time", "lat", "lon", "latitude", "longitude", "x", "y", "depth", "lag", "foo"]
UNITS = ["K", "degC", "degrees_north", "degrees_east", "m", "cm", "1", "degC/degC", "days since 1800-01-01",
         "months since 2000-01-01", "furlongs", "", None]
STD_NAMES = ["latitude", "longitude", "time", "sea_surface_temperature", "", None]


@st.composite
def odd_datasets(draw):
    """Small datasets with wrong or missing dimensions/coordinates, strings instead of numbers, odd attributes."""
    dims = draw(st.lists(st.sampled_from(DIM_NAMES), min_size=0, max_size=4, unique=True))
    sizes = {d: draw(st.integers(0, 4)) for d in dims}
    shape = tuple(sizes[d] for d in dims)
    n = int(np.prod(shape)) if shape else 1
    kind = draw(st.sampled_from(["float", "float", "int", "str", "nan"]))
    if kind == "float":
        values = np.asarray(draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                                          min_size=n, max_size=n)), dtype="float32").reshape(shape)
    elif kind == "int":
        values = np.asarray(draw(st.lists(st.integers(-30000, 30000), min_size=n, max_size=n)),
                            dtype="int16").reshape(shape)
    elif kind == "nan":
        values = np.full(shape, np.nan, dtype="float64")
    else:
        values = np.asarray(draw(st.lists(st.text("abc1.-", max_size=4), min_size=n, max_size=n)),
                            dtype=object).reshape(shape)
    var_attrs = {}
    for key, pool in (("units", UNITS), ("standard_name", STD_NAMES), ("long_name", ["sst anomaly", "x", None])):
        v = draw(st.sampled_from(pool))
        if v is not None:
            var_attrs[key] = v
    name = draw(st.sampled_from(["sst", "tos", "zos", "sensitivity", "LSMASK", "data", "prcp"]))
    ds = xr.Dataset({name: (dims, values, var_attrs)})
    if draw(st.booleans()):  # a second variable
        ds["other"] = (dims, np.zeros(shape), {"units": draw(st.sampled_from(["K", "1", "m"]))})
    for d in dims:
        how = draw(st.sampled_from(["none", "ascending", "descending", "random", "strings", "dates", "dupes"]))
        size = sizes[d]
        if how == "none":
            continue
        if how == "ascending":
            coord = np.linspace(-100, 400, size) if size else np.zeros(0)
        elif how == "descending":
            coord = np.linspace(80, -80, size) if size else np.zeros(0)
        elif how == "random":
            coord = np.asarray(draw(st.lists(st.floats(-1e6, 1e6), min_size=size, max_size=size)), dtype=float)
        elif how == "strings":
            coord = np.asarray([f"c{k}" for k in range(size)], dtype=object)
        elif how == "dates":
            coord = pd.date_range("2000-01-01", periods=size, freq=draw(st.sampled_from(["MS", "D", "YS"])))
        else:
            coord = np.zeros(size)
        attrs = {}
        for key, pool in (("units", UNITS), ("standard_name", STD_NAMES), ("axis", ["X", "Y", "T", None])):
            v = draw(st.sampled_from(pool))
            if v is not None and how != "dates":
                attrs[key] = v
        ds = ds.assign_coords({d: (d, coord, attrs)})
    return ds


@settings(FUZZ, max_examples=100)
@given(reader=NC_READERS, ds=odd_datasets(), fmt=st.sampled_from(["NETCDF4", "NETCDF3_64BIT"]))
def test_netcdf_wrong_dims_coords_and_types(work, reader, ds, fmt):
    path = work / "odd.nc"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.to_netcdf(path, format=fmt)
    except Exception:  # noqa: BLE001 - a dataset netCDF itself cannot store is not a test case
        reject()
    only_project_errors(_read_nc, reader, path)


# ================================================================================ checkpoint manifests
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
MANIFEST_KEYS = ["kind", "config", "format_version", "weights_file", "weights_sha256", "inputs", "target",
                 "normalisation", "window", "epoch", "learning_rate", "data", "test_metrics", "name", "neuralhydrology"]
CONFIG_KEYS = ["n_inputs", "hidden_size", "num_layers", "dropout", "initial_forget_bias", "hidden", "kernels",
               "n_lat", "n_lon", "window", "n_leads", "n_classes", "n_outputs", "bogus"]
KIND_VALUES = st.sampled_from(["hydro_lstm", "enso_convlstm", "sst_qoi_mlp", "hydro_lstn", "", "__init__"])
CONFIG_VALUES = st.one_of(JSON, st.integers(-5, 5_000_000), st.floats(-10, 10), st.lists(st.integers(-3, 40),
                                                                                           max_size=4))


@pytest.fixture(scope="module")
def real_ckpt(work):
    """A copy of the last epoch of the shipped demo checkpoint (real weights and manifest)."""
    from xaiscope.core.checkpoint import list_series

    src = list_series(DEMO_CKPT)[-1]
    dst = work / "real_ckpt"
    dst.mkdir()
    for name in ("manifest.json", "weights.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst, json.loads((dst / "manifest.json").read_text())


def _load_and_info(folder: Path):
    """load_checkpoint, and `xaiscope info` (whose errors must be one line, exit code 2)."""
    from xaiscope.core.checkpoint import load_checkpoint
    from xaiscope.core.cli import main

    only_project_errors(load_checkpoint, folder)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["info", str(folder)])  # anything but a project error propagates and fails the test
    if rc:
        assert rc == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()


def test_real_checkpoint_base_loads(real_ckpt):
    from xaiscope.core.checkpoint import load_checkpoint

    folder, manifest = real_ckpt
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert load_checkpoint(folder).kind == "hydro_lstm"


@FUZZ
@given(manifest=st.one_of(JSON, st.fixed_dictionaries(
    {"kind": st.one_of(KIND_VALUES, JSON), "config": st.one_of(JSON, st.dictionaries(
        st.sampled_from(CONFIG_KEYS), CONFIG_VALUES, max_size=5))},
    optional={k: JSON for k in MANIFEST_KEYS[2:]})))
def test_manifest_random_json(real_ckpt, manifest):
    folder, _ = real_ckpt
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _load_and_info(folder)


STRUCTURAL = ("kind", "config", "format_version", "weights_file", "weights_sha256")


@FUZZ
@given(data=st.data())
def test_manifest_mutated_real(real_ckpt, data):
    folder, real = real_ckpt
    manifest = json.loads(json.dumps(real))
    descriptive = sorted((set(manifest) | set(MANIFEST_KEYS)) - set(STRUCTURAL))
    for _ in range(data.draw(st.integers(1, 3))):
        region = data.draw(st.sampled_from(["descriptive", "descriptive", "descriptive", "config", "structural"]))
        if region == "config" and isinstance(manifest.get("config"), dict):
            target, keys, values = manifest["config"], sorted(set(manifest["config"]) | set(CONFIG_KEYS)), \
                CONFIG_VALUES
        elif region == "structural":
            target, keys, values = manifest, list(STRUCTURAL), st.one_of(JSON, KIND_VALUES)
        else:  # fields that do not stop loading: what is printed and used afterwards
            target, keys, values = manifest, descriptive, JSON
        key = data.draw(st.sampled_from(keys))
        if data.draw(st.integers(0, 3)) == 0:
            target.pop(key, None)
        else:
            target[key] = data.draw(values)
    text = json.dumps(manifest)
    if data.draw(st.integers(0, 4)) == 0:  # and sometimes garble the text itself
        cut = data.draw(st.integers(0, len(text)))
        text = text[:cut] + data.draw(st.text(max_size=5)) + text[cut:]
    (folder / "manifest.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    _load_and_info(folder)


@FEW
@given(meta=st.one_of(st.text(max_size=200), JSON.map(lambda v: json.dumps(v))))
def test_embedded_manifest_random(work, real_ckpt, meta):
    from safetensors.torch import load_file, save_file

    folder, _ = real_ckpt
    path = work / "one.safetensors"
    if not path.exists():
        save_file(load_file(str(folder / "weights.safetensors")), str(path), metadata={"xaiscope.manifest": "{}"})
    state = load_file(str(path))
    save_file(state, str(path), metadata={"xaiscope.manifest": meta})
    from xaiscope.core.checkpoint import load_checkpoint

    only_project_errors(load_checkpoint, path)



def test_reader_boundary_names_the_file_and_keeps_the_cause(tmp_path):
    from xaiscope.data.errors import reader_boundary

    @reader_boundary("a test file", "fix it.")
    def reader(path, key="x"):
        return {}[key]

    expected = r"f\.txt: cannot be read as a test file \(KeyError: 'x'\); fix it\."
    with pytest.raises(DataFileError, match=expected) as info:
        reader(tmp_path / "f.txt")
    assert isinstance(info.value.__cause__, KeyError)
    default = reader_boundary("a test file", "fix it.")(lambda path=None: {}["y"])
    with pytest.raises(DataFileError, match="default file"):
        default()


def _nc(path, ds):
    ds.to_netcdf(path)
    return path


def test_named_netcdf_problems_get_specific_messages(tmp_path):
    """Cases the fuzzer found, each with its own message (not the generic reader-boundary one)."""
    from xaiscope.data import sensitivity, sst

    lat, lon = np.arange(-10.0, 11.0, 5.0), np.arange(150.0, 260.0, 10.0)
    grid = np.zeros((2, lat.size, lon.size))
    time = pd.date_range("2000-01-01", periods=2, freq="MS")
    mask = xr.Dataset({"LSMASK": (("time", "lat", "lon"), grid)}, coords={"time": time, "lat": lat, "lon": lon})
    with pytest.raises(DataFileError, match="extra dimension 'time' of size 2"):
        sst.land_mask_from_landsea(_nc(tmp_path / "mask.nc", mask), lat, lon)
    strings = xr.Dataset({"sst": (("time", "lat", "lon"), grid + 20, {"units": "degC"})},
                         coords={"time": time, "lat": [f"c{k}" for k in range(lat.size)], "lon": lon})
    strings["lat"].attrs["units"] = "degrees_north"
    with pytest.raises(DataFileError, match="not numbers"):
        sst.read_sst(_nc(tmp_path / "strings.nc", strings))
    off_grid = xr.Dataset({"sst": (("time", "a", "b"), grid + 20, {"units": "degC"}),
                           "lat": ("y", lat, {"units": "degrees_north"}), "lon": ("x", lon)},
                          coords={"time": time})
    with pytest.raises(DataFileError, match="does not lie on the file's latitude coordinate"):
        sst.read_sst(_nc(tmp_path / "off.nc", off_grid))
    empty = xr.Dataset({"s": (("lag", "lat", "lon"), np.zeros((1, 0, lon.size)), {"units": "1"})},
                       coords={"lag": [0], "lat": np.zeros(0), "lon": lon})
    with pytest.raises(DataFileError, match="the grid is empty"):
        sensitivity.read_sensitivity(_nc(tmp_path / "empty.nc", empty))
