"""The library's lines for the user: stdout for information, stderr for warnings, first process only."""

from mvmr import messages


def test_info_to_stdout_warnings_to_stderr_and_only_on_the_first_process(capsys, monkeypatch):
    messages.info("hello")
    messages.warn("careful")
    out, err = capsys.readouterr()
    assert out == "hello\n" and err == "careful\n"
    monkeypatch.setenv("RANK", "1")
    messages.info("from rank 1")
    messages.warn("from rank 1")
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("RANK", "0")
    messages.info("from rank 0")
    assert capsys.readouterr().out == "from rank 0\n"
