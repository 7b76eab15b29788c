/**
 * Exit operators: compose device models as an RxJS pipeline over a vCPU's exits.
 *
 * @module
 */
export { holdVcpu } from '../hold';
export { portMatcher, rangeMatcher } from './match';
export type { PortMatcher, PortRange, AddressRange, RangeMatcher } from './match';
export { UnhandledExitError, describeExit } from '../errors';
export { writeAnswer } from './handleExits';
export type { ExitAnswer, HandlerResult } from './handleExits';
export { onIoOut } from './onIoOut';
export { onIoIn } from './onIoIn';
export { onMmioWrite } from './onMmioWrite';
export { onMmioRead } from './onMmioRead';
export { stopOn } from './stopOn';
export { untilHalt } from './untilHalt';
export { untilShutdown } from './untilShutdown';
export { failOnUnhandled } from './failOnUnhandled';
export type { FailOnUnhandledOptions, UnhandledPolicy } from './failOnUnhandled';
export { traceExits } from './traceExits';
export { ExitStats, LATENCY_BUCKETS_MS } from './ExitStats';
export type { ExitStatsOptions, ExitStatsSnapshot } from './ExitStats';
