"""Paths typed into the app are confined to the allowed roots: every way out is refused."""

import os
from pathlib import Path

import pytest

from xaiscope.core.errors import PathNotAllowedError, XaiscopeError
from xaiscope.core.paths import ENV_VAR, AllowedRoots, confine, roots_from_env, spec_folder


@pytest.fixture
def tree(tmp_path):
    """tmp/allowed/{ckpt/, file.txt}, tmp/allowed-evil/secret.txt, tmp/outside/secret.txt."""
    allowed = tmp_path / "allowed"
    (allowed / "ckpt").mkdir(parents=True)
    (allowed / "file.txt").write_text("ok")
    (tmp_path / "allowed-evil").mkdir()
    (tmp_path / "allowed-evil" / "secret.txt").write_text("secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    return tmp_path


def test_inside_is_accepted_and_resolved(tree):
    roots = AllowedRoots([tree / "allowed"])
    assert roots.confine(tree / "allowed" / "file.txt") == (tree / "allowed" / "file.txt").resolve()
    assert roots.confine(str(tree / "allowed")) == (tree / "allowed").resolve()
    # `..` that stays inside is fine, and the result is normalised
    assert roots.confine(f"{tree}/allowed/ckpt/../file.txt") == (tree / "allowed" / "file.txt").resolve()
    # a path that does not exist yet but lies inside is accepted (opening it then gives its own error)
    assert roots.confine(tree / "allowed" / "new" / "x.pt").is_relative_to((tree / "allowed").resolve())


def test_dotdot_traversal_refused(tree):
    roots = AllowedRoots([tree / "allowed"])
    for path in (f"{tree}/allowed/../outside/secret.txt", f"{tree}/allowed/ckpt/../../outside/secret.txt",
                 f"{tree}/allowed/" + "../" * 30 + "etc/passwd"):
        with pytest.raises(PathNotAllowedError, match="may only open files inside"):
            roots.confine(path)


def test_relative_dotdot_from_working_directory_refused(tree, monkeypatch):
    monkeypatch.chdir(tree / "allowed")
    roots = AllowedRoots([Path.cwd()])
    assert roots.confine("file.txt") == (tree / "allowed" / "file.txt").resolve()
    with pytest.raises(PathNotAllowedError):
        roots.confine("../outside/secret.txt")


def test_absolute_path_outside_refused(tree):
    roots = AllowedRoots([tree / "allowed"])
    for path in (tree / "outside" / "secret.txt", "/etc/passwd", "/", "~"):
        with pytest.raises(PathNotAllowedError):
            roots.confine(path)


def test_symlink_inside_root_pointing_outside_refused(tree):
    (tree / "allowed" / "link").symlink_to(tree / "outside")
    (tree / "allowed" / "filelink.txt").symlink_to(tree / "outside" / "secret.txt")
    roots = AllowedRoots([tree / "allowed"])
    for path in (tree / "allowed" / "link", tree / "allowed" / "link" / "secret.txt",
                 tree / "allowed" / "filelink.txt"):
        assert path.exists()  # the link works: only the confinement stops it
        with pytest.raises(PathNotAllowedError):
            roots.confine(path)
    # a symlink that stays inside the root is fine
    (tree / "allowed" / "inner").symlink_to(tree / "allowed" / "ckpt")
    assert roots.confine(tree / "allowed" / "inner") == (tree / "allowed" / "ckpt").resolve()


def test_root_given_as_symlink(tree):
    (tree / "rootlink").symlink_to(tree / "allowed")
    roots = AllowedRoots([tree / "rootlink"])
    assert roots.roots == ((tree / "allowed").resolve(),)
    # reached through the link or through the target: both inside
    assert roots.confine(tree / "rootlink" / "file.txt") == (tree / "allowed" / "file.txt").resolve()
    assert roots.confine(tree / "allowed" / "file.txt") == (tree / "allowed" / "file.txt").resolve()
    # but the link's own parent is not allowed, nor is escaping through it
    with pytest.raises(PathNotAllowedError):
        roots.confine(tree / "outside" / "secret.txt")
    with pytest.raises(PathNotAllowedError):
        roots.confine(f"{tree}/rootlink/../outside/secret.txt")


def test_prefix_trick_refused(tree):
    roots = AllowedRoots([tree / "allowed"])
    with pytest.raises(PathNotAllowedError):
        roots.confine(tree / "allowed-evil" / "secret.txt")
    with pytest.raises(PathNotAllowedError):
        roots.confine(str(tree / "allowed") + "-evil")
    # the same with a trailing slash on the root
    roots2 = AllowedRoots([str(tree / "allowed") + os.sep])
    with pytest.raises(PathNotAllowedError):
        roots2.confine(tree / "allowed-evil" / "secret.txt")


@pytest.mark.parametrize("bad", ["", "   ", "\n"])
def test_empty_path_refused(tree, bad):
    with pytest.raises(PathNotAllowedError, match="empty"):
        AllowedRoots([tree / "allowed"]).confine(bad)


def test_nul_byte_refused(tree):
    roots = AllowedRoots([tree / "allowed"])
    with pytest.raises(PathNotAllowedError, match="NUL"):
        roots.confine(f"{tree}/allowed/file.txt\x00../../outside/secret.txt")
    with pytest.raises(PathNotAllowedError, match="NUL"):
        roots.confine(b"/tmp/x\x00y")


def test_not_a_path_refused(tree):
    for bad in (None, 3, ["a"], b"\xff\xfe"):
        with pytest.raises(PathNotAllowedError):
            AllowedRoots([tree / "allowed"]).confine(bad)


def test_message_names_roots_and_how_to_add_one(tree):
    roots = AllowedRoots([tree / "allowed", tree / "other"])
    with pytest.raises(PathNotAllowedError) as info:
        roots.confine(tree / "outside" / "secret.txt")
    msg = str(info.value)
    assert str((tree / "allowed").resolve()) in msg and str((tree / "other").resolve()) in msg
    assert "--allow-root" in msg and ENV_VAR in msg
    assert isinstance(info.value, XaiscopeError)


def test_no_roots_refuses_everything(tree):
    with pytest.raises(PathNotAllowedError, match="inside none"):
        AllowedRoots().confine(tree / "allowed" / "file.txt")


def test_confine_function_and_contains(tree):
    assert confine(tree / "allowed" / "file.txt", [tree / "allowed"]) == (tree / "allowed" / "file.txt").resolve()
    assert confine(tree / "allowed" / "file.txt", str(tree / "allowed")) == (tree / "allowed" / "file.txt").resolve()
    roots = AllowedRoots([tree / "allowed"])
    assert (tree / "allowed" / "file.txt") in roots
    assert (tree / "outside" / "secret.txt") not in roots
    with pytest.raises(PathNotAllowedError):
        confine(tree / "outside", [tree / "allowed"])


def test_env_and_defaults(tree, monkeypatch):
    env = {ENV_VAR: os.pathsep.join([str(tree / "outside"), "", str(tree / "allowed-evil")])}
    assert roots_from_env(env) == [tree / "outside", tree / "allowed-evil"]
    monkeypatch.setenv("XAISCOPE_CACHE_DIR", str(tree / "cache"))
    monkeypatch.chdir(tree / "allowed")
    from xaiscope.assets import ASSETS

    roots = AllowedRoots.for_app(paths=[str(tree / "runs" / "ckpt_dir"), f"{tree}/camels#01031500", "demo",
                                        "synthetic:3"],
                                 extra=[tree / "extra"], environ=env)
    expected = {Path(ASSETS).resolve(), (tree / "allowed").resolve(), (tree / "cache").resolve(),
                (tree / "runs").resolve(), tree.resolve(), (tree / "extra").resolve(),
                (tree / "outside").resolve(), (tree / "allowed-evil").resolve()}
    assert set(roots.roots) == expected
    # without the defaults, the working directory is not allowed
    bare = AllowedRoots.for_app(paths=[str(tree / "runs" / "x")], defaults=False, environ={})
    assert bare.roots == ((tree / "runs").resolve(),)
    with pytest.raises(PathNotAllowedError):
        bare.confine(tree / "allowed" / "file.txt")


def test_spec_folder():
    assert spec_folder("demo") is None and spec_folder("synthetic:1") is None and spec_folder("") is None
    assert spec_folder("/a/b/c.nc") == Path("/a/b").resolve()
    assert spec_folder("/a/camels#01031500") == Path("/a").resolve()
    assert spec_folder(object()) is None
