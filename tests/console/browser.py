"""The operator console in a real headless browser (Debian's chromium and chromedriver,
driven by selenium), against the `ferry serve` that tests/console.rs started.

Environment: FERRY_BASE, FERRY_ADMIN_TOKEN, FERRY_REVISION, FERRY_DEV_KID, FERRY_POLICY,
FERRY_SHOTS (a directory for the screenshots), and tokens FERRY_TOKEN_ALICE (a
deployer), FERRY_TOKEN_MALLORY (not one) and FERRY_TOKEN_EVE (a deployer whose token is
then exchanged from a second address). Exits 0 when every step held; otherwise prints
what did not and saves the page it was on.
"""

import http.client
import json
import os
import sys
import urllib.parse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE = os.environ["FERRY_BASE"]
HOST, PORT = urllib.parse.urlsplit(BASE).hostname, urllib.parse.urlsplit(BASE).port
SHOTS = os.environ["FERRY_SHOTS"]


def exchange(token, source="127.0.0.1", audience="internal-api"):
    """One RFC 8693 exchange from `source`: (status, JSON answer)."""
    conn = http.client.HTTPConnection(HOST, PORT, timeout=10, source_address=(source, 0))
    body = urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "audience": audience,
    })
    conn.request("POST", "/oauth2/token", body, {"content-type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    answer = json.loads(r.read() or b"null")
    conn.close()
    return r.status, answer


def admin(method, path):
    conn = http.client.HTTPConnection(HOST, PORT, timeout=10)
    conn.request(method, path, headers={"authorization": "Bearer " + os.environ["FERRY_ADMIN_TOKEN"]})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def main():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(20)
    wait = WebDriverWait(driver, 10)
    # After a form posts and the page reloads, an element looked up mid-navigation can
    # fail with any WebDriver error; such waits retry until their condition holds.
    settle = WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,))
    step = "start"

    def shot(name):
        driver.save_screenshot(os.path.join(SHOTS, name + ".png"))

    def text(selector):
        return settle.until(lambda d: d.find_element(By.CSS_SELECTOR, selector).text or " ")

    def rows_of(selector):
        settle.until(EC.presence_of_element_located((By.CSS_SELECTOR, selector)))
        return settle.until(lambda d: [r.text for r in d.find_elements(By.CSS_SELECTOR, selector)])

    try:
        step = "a page without a session goes to sign-in"
        driver.get(BASE + "/admin/ui/overview")
        check(driver.current_url.endswith("/admin/ui/sign-in"), driver.current_url)
        shot("sign-in")

        step = "a wrong token is refused"
        driver.find_element(By.ID, "token").send_keys("not-the-token")
        driver.find_element(By.ID, "sign-in").click()
        check("not the admin token" in text("#problem"), text("main"))

        step = "sign in"
        driver.find_element(By.ID, "token").send_keys(os.environ["FERRY_ADMIN_TOKEN"])
        driver.find_element(By.ID, "sign-in").click()
        wait.until(EC.url_contains("/admin/ui/overview"))
        check(os.environ["FERRY_REVISION"] in text("#revision"), text("#revision"))
        check("healthy" in text("#store"), text("#store"))

        step = "the issuers page shows the dev issuer with its key id"
        driver.find_element(By.LINK_TEXT, "Issuers").click()
        wait.until(EC.url_contains("/admin/ui/issuers"))
        row = rows_of("#issuers tbody tr")[0]
        check("dev" in row and os.environ["FERRY_DEV_KID"] in row and "ready" in row, row)
        check(len(driver.find_elements(By.CSS_SELECTOR, "#signing-keys tbody tr")) >= 1, "no signing key")
        shot("issuers")

        step = "a granted and a denied exchange appear on the decisions page"
        status, answer = exchange(os.environ["FERRY_TOKEN_ALICE"])
        check(status == 200, (status, answer))
        status, answer = exchange(os.environ["FERRY_TOKEN_MALLORY"])
        check(status == 400, (status, answer))
        driver.find_element(By.LINK_TEXT, "Decisions").click()
        wait.until(EC.url_contains("/admin/ui/decisions"))
        rows = rows_of("#decisions tbody tr")
        check(any("dev:alice" in r and "allow" in r for r in rows), rows)
        check(any("dev:mallory" in r and "deny" in r for r in rows), rows)
        check(not any(os.environ["FERRY_TOKEN_ALICE"][:40] in r for r in rows), "a token is on the page")
        shot("decisions")

        step = "a filter narrows the list"
        Select(driver.find_element(By.ID, "f-decision")).select_by_value("deny")
        driver.find_element(By.CSS_SELECTOR, ".filters button").click()
        wait.until(EC.url_contains("decision=deny"))
        rows = rows_of("#decisions tbody tr")
        check(rows and all("deny" in r for r in rows), rows)

        step = "a row opens its trace"
        driver.get(BASE + "/admin/ui/decisions?subject=dev%3Aalice")
        driver.find_element(By.CSS_SELECTOR, "#decisions tbody tr td:last-child a").click()
        wait.until(EC.presence_of_element_located((By.ID, "facts")))
        check(text("#verdict") == "allowed", text("main"))
        check("dev-deployers-read" in text("#trace"), text("#trace"))
        shot("decision")

        step = "revoke a subject from the console; the next exchange is refused"
        driver.find_element(By.LINK_TEXT, "Revocations").click()
        wait.until(EC.url_contains("/admin/ui/revocations"))
        Select(driver.find_element(By.ID, "kind")).select_by_value("subject")
        driver.find_element(By.ID, "value").send_keys("dev:alice")
        driver.find_element(By.ID, "reason").send_keys("laptop lost")
        driver.find_element(By.ID, "revoke").click()
        wait.until(EC.alert_is_present()).accept()
        settle.until(EC.text_to_be_present_in_element((By.ID, "revocations"), "dev:alice"))
        check("laptop lost" in text("#revocations"), text("#revocations"))
        shot("revocations")
        status, answer = exchange(os.environ["FERRY_TOKEN_ALICE"])
        check(status == 400 and "revoked" in answer.get("error_description", ""), (status, answer))

        step = "lift it; alice is granted again"
        driver.find_element(By.CSS_SELECTOR, "#revocations button.lift").click()
        wait.until(EC.alert_is_present()).accept()
        settle.until(lambda d: "dev:alice" not in d.find_element(By.ID, "revocations").text)
        status, answer = exchange(os.environ["FERRY_TOKEN_ALICE"])
        check(status == 200, (status, answer))

        step = "the same token from 127.0.0.1 and 127.0.0.2 raises an anomaly"
        eve = os.environ["FERRY_TOKEN_EVE"]
        check(exchange(eve, "127.0.0.1")[0] == 200, "eve from .1")
        check(exchange(eve, "127.0.0.2")[0] == 200, "eve from .2")
        driver.find_element(By.LINK_TEXT, "Anomalies").click()
        wait.until(EC.url_contains("/admin/ui/anomalies"))
        table = text("#anomalies")
        check("token_reuse_across_clients" in table and "dev:eve" in table and "127.0.0.2" in table, table)
        shot("anomalies")
        driver.find_element(By.CSS_SELECTOR, "#anomalies button.ack").click()
        settle.until(EC.text_to_be_present_in_element((By.ID, "anomalies"), "acknowledged"))

        step = "a reload's diff is on the policies page"
        with open(os.environ["FERRY_POLICY"], "a", encoding="utf-8") as f:
            f.write('\n@id("console-added")\npermit (principal in Ferry::Group::"deployers", action, resource == Ferry::Target::"internal-api")\nwhen { principal.attributes.repository == "acme/console" };\n')
        status, body = admin("POST", "/admin/reload")
        check(status == 200, (status, body))
        driver.find_element(By.LINK_TEXT, "Policies").click()
        wait.until(EC.url_contains("/admin/ui/policies"))
        reloads = text("#reloads")
        check("+console-added" in reloads, reloads)
        check("console-added" in text("#policies"), text("#policies"))
        shot("policies")

        step = "the overview counts what happened"
        driver.find_element(By.LINK_TEXT, "Overview").click()
        check(int(text("#hour-total .value")) >= 6, text("#hour-total"))
        check(len(driver.find_elements(By.CSS_SELECTOR, "figure.chart svg polyline")) == 5, "charts")
        shot("overview")

        step = "sign out ends the session"
        driver.find_element(By.ID, "sign-out").click()
        wait.until(EC.url_contains("/admin/ui/sign-in"))
        driver.get(BASE + "/admin/ui/decisions")
        check(driver.current_url.endswith("/admin/ui/sign-in"), driver.current_url)
    except Exception as e:  # noqa: BLE001 - reported with the step and the page
        shot("failure")
        with open(os.path.join(SHOTS, "failure.html"), "w", encoding="utf-8") as f:
            f.write(driver.page_source)
        print(f"console browser test failed at '{step}': {e!r} {getattr(e, 'msg', '')}", file=sys.stderr)
        driver.quit()
        return 1
    driver.quit()
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
