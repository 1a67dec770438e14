"""wrenn.code_runner through the official SDK: Jupyter in a code-runner-beta capsule via the port proxy."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
from _harness import case, main
from wrenn.code_runner import Capsule as CodeRunner

FIGURE = """
import matplotlib.pyplot as plt
import numpy as np
x = np.linspace(0, 2 * np.pi, 100)
fig, ax = plt.subplots()
ax.plot(x, np.sin(x))
ax.set_title("sine")
plt.show()
"""


@case
def value_and_figure(**_: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    with CodeRunner(wait=True) as cr:
        ready = round(time.monotonic() - t0, 2)
        info = cr.get_info()
        assert info.template == "code-runner-beta", info

        t1 = time.monotonic()
        r = cr.run_code("x = 21\nx * 2")
        first_cell = round(time.monotonic() - t1, 2)
        assert r.error is None and r.text == "42", (r.error, r.results)
        assert r.execution_count == 1 or r.execution_count is None or r.execution_count >= 1

        state = cr.run_code("print('hello', x)\nx + 1")  # state persists across cells
        assert state.logs.stdout == ["hello 21\n"] and state.text == "22", state

        fig = cr.run_code(FIGURE)
        assert fig.error is None, fig.error
        pngs = [res.png for res in fig.results if res.png]
        assert pngs, [res.formats() for res in fig.results]
        png = base64.b64decode(pngs[0])
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, len(png)

        df = cr.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
        assert df.error is None and df.results and df.results[0].html and "<table" in df.results[0].html

        err = cr.run_code("1 / 0")
        assert err.error is not None and err.error.name == "ZeroDivisionError", err.error
        stderr = cr.run_code("import sys; print('to-stderr', file=sys.stderr)")
        assert "".join(stderr.logs.stderr) == "to-stderr\n", stderr.logs

        # the kernel shares the capsule's filesystem with files/exec
        cr.run_code("open('/home/wrenn-user/from_kernel.txt', 'w').write('kernel wrote this')")
        assert cr.files.read("/home/wrenn-user/from_kernel.txt") == "kernel wrote this"
        versions = cr.run_code("import numpy, pandas, matplotlib, seaborn, requests\n"
                               "print(numpy.__version__, pandas.__version__, matplotlib.__version__)")
        assert versions.error is None, versions.error

        # the same proxy serves plain HTTP for get_url(): Jupyter's REST API from a client outside
        url = cr.get_url(8888)
        kernels = httpx.get(f"{url}/api/kernels", headers={"X-API-Key": cr._client._api_key}, timeout=10)
        assert kernels.status_code == 200 and any(k["name"] == "wrenn" for k in kernels.json()), kernels.text
        procs = [p.tag for p in cr.commands.list()]
        assert "start" in procs, procs
    return {"ready_seconds": ready, "first_cell_seconds": first_cell, "text": r.text, "png_bytes": len(png),
            "error_name": err.error.name, "versions": versions.logs.stdout, "url": url}


if __name__ == "__main__":
    main()
