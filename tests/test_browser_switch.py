"""EELIB_BROWSER_TESTS: the browser tests are on unless it is 0; any other value is reported, not run."""

import pytest

import browser


@pytest.mark.parametrize("value", [None, "", "1"])
def test_on_by_default(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(browser.SWITCH, raising=False)
    else:
        monkeypatch.setenv(browser.SWITCH, value)
    monkeypatch.setattr(browser, "chromium_path", lambda: None)  # past the switch: the next reason is the browser
    reason = browser.unavailable()
    assert reason is not None and ("Chromium" in reason or "Playwright" in reason), reason


def test_zero_turns_them_off(monkeypatch):
    monkeypatch.setenv(browser.SWITCH, "0")
    assert "EELIB_BROWSER_TESTS=0" in browser.unavailable()


@pytest.mark.parametrize("value", ["yes", "false", "2"])
def test_another_value_is_named(monkeypatch, value):
    monkeypatch.setenv(browser.SWITCH, value)
    reason = browser.unavailable()
    assert f"EELIB_BROWSER_TESTS={value!r}" in reason and "0 (off) or 1 (on)" in reason
