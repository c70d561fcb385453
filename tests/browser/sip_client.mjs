// Drives the JS RTM client, loaded from the bridge, in headless Chromium (see tests/browser_sip.rs):
// logs in as alice, invites SIP extension 1001 and waits for the answer, then waits for a phone to
// ring alice. Prints one JSON line per step; exits non-zero with a message on failure.
// Usage: node tests/browser/sip_client.mjs http://127.0.0.1:PORT
import { chromium } from 'playwright-core';

const base = process.argv[2];
if (!base) {
  console.error('usage: sip_client.mjs <base-url>');
  process.exit(2);
}
const say = (step, data = {}) => console.log(JSON.stringify({ step, ...data }));

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const errors = [];
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => errors.push(e.message));
  // Any page of the bridge will do: the client module is imported from the bridge's origin.
  await page.goto(`${base}/`);
  await page.evaluate(async () => {
    const { createInstance } = await import('/sdk/rtm-client.js');
    const seen = [];
    const client = createInstance('app');
    client.on('RemoteInvitationReceived', (inv) =>
      seen.push({ callerId: inv.callerId, content: inv.content, state: inv.state }));
    window.sipTest = { client, seen };
  });
  say('login', {
    state: await page.evaluate(async () => {
      await sipTest.client.login({ uid: 'alice' });
      return sipTest.client.connectionState;
    }),
  });
  say('call', {
    result: await page.evaluate(() => new Promise((resolve, reject) => {
      const inv = sipTest.client.createLocalInvitation('1001');
      inv.content = JSON.stringify({ Mode: 1, Conference: false, ChanId: 'browser-sip' });
      const events = [];
      inv.on('LocalInvitationReceivedByPeer', () => events.push('LocalInvitationReceivedByPeer'));
      inv.on('LocalInvitationAccepted', (response) =>
        resolve({ state: inv.state, response, events }));
      inv.on('LocalInvitationRefused', (response) => resolve({ state: inv.state, response, events }));
      inv.on('LocalInvitationFailure', (reason) => resolve({ state: inv.state, reason, events }));
      inv.send().catch(reject);
      setTimeout(() => reject(new Error(`no answer; events ${events}`)), 15000);
    })),
  });
  say('ready_for_incoming');
  say('incoming', {
    invitation: await page.evaluate(() => new Promise((resolve, reject) => {
      const started = Date.now();
      const poll = () => {
        if (sipTest.seen.length) return resolve(sipTest.seen[0]);
        if (Date.now() - started > 15000) return reject(new Error('no RemoteInvitationReceived'));
        setTimeout(poll, 20);
      };
      poll();
    })),
    errors,
  });
} catch (e) {
  console.error(`browser test failed: ${e.stack || e}`);
  console.error(`page errors: ${JSON.stringify(errors)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
