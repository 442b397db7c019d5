// A worker that must run on one machine of the fleet at a time. gossip-election starts
// it when this machine acquires the ticket and sends SIGTERM when it must stop.
const node = process.env.GOSSIP_ELECTION_NODE;
const resource = process.env.GOSSIP_ELECTION_RESOURCE;
const lease = process.env.GOSSIP_ELECTION_LEASE;
// Write the term with every side effect; the store refuses a lower one than it has seen.
const term = process.env.GOSSIP_ELECTION_TERM;

console.log(`${node} runs ${resource} (lease ${lease}, term ${term}), pid ${process.pid}`);
const work = setInterval(() => console.log(`${node}: ${resource} tick`), 2000);

process.on("SIGTERM", () => {
  clearInterval(work);
  console.log(`${node}: stopping ${resource}`);
  process.exit(0);
});
