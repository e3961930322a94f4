#!/usr/bin/perl
# Perl Gearman::Client driver for the interop tests: submits one job, prints what it saw.
# usage: client.pl HOST:PORT FUNCTION [--bg] [--priority high|low] [--uniq U] [--exceptions]
# The workload is read from stdin. Output, one event a line, payloads in hex:
#   status N D | data HEX | warning HEX | exception HEX | fail | complete HEX
#   then "returned HEX" or "returned undef" (do_task), or "handle H" (--bg).
use strict;
use warnings;
use Getopt::Long;
use Gearman::Client;

my ($bg, $priority, $uniq, $exceptions) = (0, undef, undef, 0);
GetOptions(
    'bg'         => \$bg,
    'priority=s' => \$priority,
    'uniq=s'     => \$uniq,
    'exceptions' => \$exceptions,
) or die "bad options\n";
my ($server, $function) = @ARGV;
binmode STDIN;
binmode STDOUT;
$| = 1;
my $workload = do { local $/; <STDIN> };
$workload = '' unless defined $workload;

sub hex_of { return unpack('H*', defined $_[0] ? $_[0] : '') }

my $client = Gearman::Client->new(job_servers => [$server], exceptions => $exceptions);
my %opts = (
    on_status    => sub { print "status $_[0] $_[1]\n" },
    on_data      => sub { print 'data ', hex_of(${ $_[0] }), "\n" },
    on_warning   => sub { print "warning ", hex_of(ref $_[0] ? ${ $_[0] } : $_[0]), "\n" },
    on_exception => sub { print 'exception ', hex_of($_[0]), "\n" },
    on_fail      => sub { print "fail\n" },
    on_complete  => sub { print 'complete ', hex_of(${ $_[0] }), "\n" },
);
$opts{priority} = $priority if defined $priority;
$opts{uniq} = $uniq if defined $uniq;

if ($bg) {
    my $handle = $client->dispatch_background($function, \$workload, \%opts);
    die "dispatch_background failed\n" unless defined $handle;
    print "handle $handle\n";
    exit 0;
}
my $ret = $client->do_task($function, \$workload, \%opts);
print 'returned ', (defined $ret ? hex_of($$ret) : 'undef'), "\n";
