<?php
class Account extends CommonObject
{
	public function create($user)
	{
		$triggerName = 'BANKACCOUNT_CREATE';
		return $this->call_trigger($triggerName, $user);
	}
	public function dynamic($user)
	{
		return $this->call_trigger(strtoupper($this->element).'_MODIFY', $user);
	}
}
