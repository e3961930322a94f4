<?php
// PHP GearmanClient driver for the interop tests: submits one job, prints what it saw.
// usage: php client.php HOST:PORT FUNCTION [--bg] [--priority high|low] [--uniq U] [--exceptions] [--do]
// The workload is read from stdin. Output, one event a line, payloads in hex:
//   status N D | data HEX | warning HEX | exception HEX | fail | complete HEX
//   then "returned <return code>" (foreground) or "handle H" (--bg).
// Foreground jobs run as a task with callbacks, or with --do through doNormal(), whose
// returnCode() is then GEARMAN_SUCCESS, GEARMAN_WORK_FAIL or GEARMAN_WORK_EXCEPTION.
// php-gearman enables exceptions (OPTION_REQ "exceptions") in addServer() whatever
// --exceptions says; the flag is accepted for symmetry with client.pl.
$args = array_slice($argv, 1);
$bg = false; $priority = null; $uniq = null; $exceptions = false; $do = false; $pos = [];
for ($i = 0; $i < count($args); $i++) {
    switch ($args[$i]) {
        case '--bg': $bg = true; break;
        case '--exceptions': $exceptions = true; break;
        case '--do': $do = true; break;
        case '--priority': $priority = $args[++$i]; break;
        case '--uniq': $uniq = $args[++$i]; break;
        default: $pos[] = $args[$i];
    }
}
[$server, $function] = $pos;
[$host, $port] = explode(':', $server);
$workload = stream_get_contents(STDIN);

$codes = [
    GEARMAN_SUCCESS => 'GEARMAN_SUCCESS', GEARMAN_WORK_FAIL => 'GEARMAN_WORK_FAIL',
    GEARMAN_WORK_EXCEPTION => 'GEARMAN_WORK_EXCEPTION', GEARMAN_WORK_DATA => 'GEARMAN_WORK_DATA',
    GEARMAN_WORK_WARNING => 'GEARMAN_WORK_WARNING', GEARMAN_WORK_STATUS => 'GEARMAN_WORK_STATUS',
];
$client = new GearmanClient();
$client->addServer($host, (int)$port);
$client->setTimeout(60000);
if ($bg) {
    $method = ['high' => 'doHighBackground', 'low' => 'doLowBackground'][$priority ?? ''] ?? 'doBackground';
    $handle = $client->$method($function, $workload, $uniq);
    echo "handle $handle\n";
    exit($client->returnCode() == GEARMAN_SUCCESS ? 0 : 1);
}
if ($do) {
    $method = ['high' => 'doHigh', 'low' => 'doLow'][$priority ?? ''] ?? 'doNormal';
    do {
        $result = $client->$method($function, $workload, $uniq);
        $rc = $client->returnCode();
        if ($rc == GEARMAN_WORK_STATUS) {
            [$n, $d] = $client->doStatus();
            echo "status $n $d\n";
        } elseif ($rc == GEARMAN_WORK_DATA) {
            echo 'data ', bin2hex($result), "\n";
        } elseif ($rc == GEARMAN_WORK_WARNING) {
            echo 'warning ', bin2hex($result), "\n";
        }
    } while ($rc == GEARMAN_WORK_STATUS || $rc == GEARMAN_WORK_DATA || $rc == GEARMAN_WORK_WARNING);
    if ($rc == GEARMAN_SUCCESS) {
        echo 'complete ', bin2hex($result), "\n";
    } elseif ($rc == GEARMAN_WORK_FAIL) {
        echo "fail\n";
    } elseif ($rc == GEARMAN_WORK_EXCEPTION) {
        echo 'exception ', bin2hex($client->error()), "\n";
    }
    echo 'returned ', $codes[$rc] ?? "rc$rc", "\n";
    exit(0);
}
$client->setStatusCallback(function ($task) {
    echo 'status ', $task->taskNumerator(), ' ', $task->taskDenominator(), "\n";
});
$client->setDataCallback(function ($task) { echo 'data ', bin2hex($task->data()), "\n"; });
$client->setWarningCallback(function ($task) { echo 'warning ', bin2hex($task->data()), "\n"; });
$client->setExceptionCallback(function ($task) { echo 'exception ', bin2hex($task->data()), "\n"; });
$client->setFailCallback(function ($task) { echo "fail\n"; });
$client->setCompleteCallback(function ($task) { echo 'complete ', bin2hex($task->data()), "\n"; });
$method = ['high' => 'addTaskHigh', 'low' => 'addTaskLow'][$priority ?? ''] ?? 'addTask';
$task = $client->$method($function, $workload, null, $uniq);
$ok = $client->runTasks();
echo 'returned ', $ok ? 'ok' : 'error ' . $client->error(), "\n";
