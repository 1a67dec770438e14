"""capsule.git through the official SDK, local operations only (init, add, commit, status, branches)."""

from __future__ import annotations

from typing import Any

from _harness import case, main
from wrenn import Capsule
from wrenn._git import GitCommandError

HOME = "/home/wrenn-user"


@case
def local_workflow(**_: Any) -> dict[str, Any]:
    with Capsule(wait=True) as cap:
        version = cap.commands.run("git --version").stdout.strip()

        # init in the default working directory (the home directory)
        cap.git.init(".")
        assert cap.files.exists(f"{HOME}/.git"), "git init . must create ~/.git"

        cap.git.init("repo", initial_branch="main")
        cap.files.write(f"{HOME}/repo/README.md", "# hello\n")
        cap.files.write(f"{HOME}/repo/src/app.py", "print('hi')\n")
        st = cap.git.status(cwd="repo")  # relative cwd
        assert st.branch == "main" and st.has_untracked and not st.has_staged, st
        untracked = sorted(f.path for f in st.files)

        cap.git.add(cwd="repo")
        staged = cap.git.status(cwd="repo")
        assert staged.has_staged and not staged.has_untracked, staged

        cap.git.commit("first commit", author_name="E2E Test", author_email="e2e@wrenn.local", cwd="repo")
        clean = cap.git.status(cwd="repo")
        assert clean.is_clean and clean.branch == "main", clean
        log = cap.commands.run("git log --format='%an <%ae> %s'", cwd=f"{HOME}/repo").stdout.strip()
        assert log == "E2E Test <e2e@wrenn.local> first commit", log

        cap.files.write(f"{HOME}/repo/README.md", "# hello\nchanged\n")
        modified = cap.git.status(cwd="repo")
        assert [(f.path, f.status) for f in modified.files] == [("README.md", "modified")], modified.files

        cap.git.create_branch("feature", cwd="repo")
        branches = cap.git.branches(cwd="repo")
        names = sorted(b.name for b in branches)
        current = [b.name for b in branches if b.is_current]
        assert names == ["feature", "main"] and current == ["feature"], branches
        cap.git.add(["README.md"], cwd="repo")
        cap.git.commit("on feature", author_name="E2E Test", author_email="e2e@wrenn.local", cwd="repo")
        cap.git.checkout_branch("main", cwd="repo")
        assert cap.files.read(f"{HOME}/repo/README.md") == "# hello\n"
        assert cap.git.status(cwd="repo").branch == "main"

        try:
            cap.git.commit("nothing to commit", author_name="E2E", author_email="e@x", cwd="repo")
        except GitCommandError as exc:
            nothing = str(exc)
        else:
            raise AssertionError("an empty commit must raise GitCommandError")
        cap.git.commit("empty ok", allow_empty=True, author_name="E2E", author_email="e@x", cwd="repo")
        count = cap.commands.run("git rev-list --count HEAD", cwd=f"{HOME}/repo").stdout.strip()
        return {"git": version, "untracked": untracked, "branches": names, "current": current,
                "empty_commit_error": nothing[:200], "main_commits": int(count)}


if __name__ == "__main__":
    main()
