// Drives the JS RTM client in headless Chromium against a running hub (see tests/browser_hub.rs).
// Usage: node tests/browser/hub_client.mjs http://127.0.0.1:PORT '{"alice":"<token>",...}'
// Prints one JSON object with what each page saw; exits non-zero with a message on failure.
import { chromium } from 'playwright-core';

const base = process.argv[2];
const tokens = JSON.parse(process.argv[3] || '{}');
if (!base) {
  console.error('usage: hub_client.mjs <base-url>');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const pageErrors = [];
try {
  const context = await browser.newContext();
  const open = async (name) => {
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(`${name} console: ${m.text()}`); });
    await page.goto(`${base}/test/hub.html`);
    await page.waitForFunction(() => window.hubReady === true);
    return page;
  };
  const alice = await open('alice');
  const bob = await open('bob');
  const result = {};

  result.aliceLogin = await alice.evaluate((t) => hubTest.login('alice', t), tokens.alice);
  result.bobLogin = await bob.evaluate((t) => hubTest.login('bob', t), tokens.bob);
  result.query = await alice.evaluate(() => hubTest.query(['bob', 'carol']));
  await alice.evaluate(() => hubTest.subscribe(['bob']));
  result.subscribed = await alice.evaluate(() => hubTest.waitFor('PeersOnlineStatusChanged'));

  // alice rings bob; bob accepts.
  const call = alice.evaluate(() => hubTest.call('bob'));
  result.bobRang = await bob.evaluate(() => hubTest.waitFor('RemoteInvitationReceived'));
  result.bobAcceptState = await bob.evaluate(() => hubTest.accept());
  result.bobAcceptedEvent = await bob.evaluate(() => hubTest.waitFor('RemoteInvitationAccepted'));
  result.call = await call;

  // The call's media channel (used by the media path) reaches the other page.
  await alice.evaluate(() => hubTest.sendMedia({ sdp: 'v=0 test-offer' }));
  result.bobMedia = await bob.evaluate(() => hubTest.waitFor('Media'));

  // Peer message.
  result.message = await alice.evaluate(() => hubTest.message('bob', 'hello bob'));
  result.bobMessage = await bob.evaluate(() => hubTest.waitFor('MessageFromPeer'));

  // Errors reach the app as Error objects with a code.
  result.wrongAppid = await alice.evaluate(() => hubTest.wrongAppid());
  result.callSelf = await alice.evaluate(() => hubTest.callSelf('alice'));

  // bob logs in again elsewhere: the first bob page is told REMOTE_LOGIN.
  const bob2 = await open('bob2');
  result.bob2Login = await bob2.evaluate((t) => hubTest.login('bob', t), tokens.bob);
  result.bobReplaced = await bob.evaluate(() => hubTest.waitFor('ConnectionStateChanged', 3));

  result.aliceLogout = await alice.evaluate(() => hubTest.logout());
  result.aliceLog = await alice.evaluate(() => hubTest.log);
  result.pageErrors = pageErrors;
  console.log(JSON.stringify(result));
} catch (e) {
  console.error(`browser test failed: ${e.stack || e}`);
  console.error(`page errors: ${JSON.stringify(pageErrors)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
