// Package sbtest runs local fakes of the Service Bus management API (ATOM over TLS) and of its AMQP peek and CBS operations, for tests of flowscaler's use of the SDK.
package sbtest
