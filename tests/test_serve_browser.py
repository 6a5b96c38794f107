"""The feedback page in a real browser: headless Debian Chromium driven by Selenium.

A real daemon handles a drift event; the Slack integration posts its alert
to the stand-in Slack (which checks the Block Kit). A person opens the
"False alarm" button's link from the message Slack received, sees
the answer preselected, gives a reason and the time spent, and submits; the
spool then holds ``feedback.human_validation`` with the alert's correlation
id. A second answer (the same link open in another tab) is refused. The
screenshots are saved under the test's tmp dir and, if set, $POET_TEST_ARTIFACTS.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from integrations_stage import Story, buttons, link_id

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=900,1300",
)
WAIT = 60
DRIFT = {
    "execution_id": "exec-browser-1",
    "function_name": "detect_drift",
    "model_name": "customer_churn_model",
    "feature_name": "user_activity_score",
    "drift_score": 0.82,
    "method": "ks_test",
    "statistical_significance": 0.004,
    "data_characteristics": {"sample_size": 10000, "data_type": "continuous", "missing_values_percent": 0.0},
}

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def artifact(driver: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot under tmp_path and, when $POET_TEST_ARTIFACTS is set, copy it there."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), f"screenshot {name} failed"
    assert path.stat().st_size > 1000
    dest = os.environ.get("POET_TEST_ARTIFACTS")
    if dest:
        os.makedirs(dest, exist_ok=True)
        shutil.copy(path, Path(dest) / name)
    return path


def test_a_person_answers_false_alarm_in_the_browser_and_a_second_answer_is_refused(
    tmp_path: Path, browser: Any
) -> None:
    """Slack link -> preselected form -> submit -> human_validation with the alert's correlation; 2nd answer refused."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with ExitStack() as stack:
        story = Story(tmp_path, stack)
        drift_id = story.emit("drift.detected", DRIFT, correlation_id="drift-alert-browser")
        r = story.daemon_once()
        assert r.returncode == 0, r.stderr
        [alert] = story.events("alert.create_external")
        [message] = story.slack.wait_for(1)
        assert message.reply == 200, message.body  # the stand-in accepted the Block Kit
        url = buttons(message.json())["False alarm"]
        assert url.startswith(story.server.url + "/poet/feedback/") and link_id(url) == drift_id

        browser.get(url)
        first = browser.current_window_handle
        assert browser.find_element(By.TAG_NAME, "h1").text == "Was this real drift?"
        assert "customer_churn_model" in browser.find_element(By.ID, "alert").text
        assert browser.find_element(By.ID, "answer-false_alarm").is_selected()
        assert not browser.find_element(By.ID, "answer-real_drift").is_selected()
        # Every visible control is labelled (a label for= it, or a label around it).
        for el in browser.find_elements(By.CSS_SELECTOR, "input:not([type=hidden]), textarea"):
            eid = el.get_attribute("id")
            labelled = browser.find_elements(By.CSS_SELECTOR, f"label[for='{eid}']") or el.find_elements(
                By.XPATH, "ancestor::label"
            )
            assert labelled, f"control {eid} has no label"

        # The same link open in a second tab: the later answer must be refused.
        browser.switch_to.new_window("tab")
        browser.get(url)
        second = browser.current_window_handle
        assert browser.find_element(By.ID, "feedback")

        browser.switch_to.window(first)
        browser.find_element(By.ID, "reason").send_keys("Seasonal promo traffic; the feature recovers after it.")
        browser.find_element(By.ID, "minutes").send_keys("15")
        artifact(browser, tmp_path, "feedback-form.png")
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.ID, "thanks")))
        assert "False alarm" in browser.find_element(By.TAG_NAME, "main").text
        artifact(browser, tmp_path, "feedback-thanks.png")

        [ev] = story.events("feedback.human_validation")
        assert ev["correlation_id"] == alert["correlation_id"]
        assert ev["payload"]["was_real_drift"] is False
        assert ev["payload"]["investigation_time_minutes"] == 15.0
        assert ev["payload"]["execution_id"] == "exec-browser-1"

        browser.switch_to.window(second)
        browser.find_element(By.ID, "answer-real_drift").click()
        browser.find_element(By.ID, "reason").send_keys("I think it was real")
        browser.find_element(By.ID, "minutes").send_keys("3")
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.ID, "already")))
        assert "False alarm" in browser.find_element(By.TAG_NAME, "main").text
        artifact(browser, tmp_path, "feedback-already-answered.png")
        assert len(story.events("feedback.human_validation")) == 1
